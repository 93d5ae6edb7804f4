"""What the machine offers and how processes share it: CPU and GPU precision, threads and
workers (:mod:`~pneumonia.system.runtime`), launchers' ranks (:mod:`~pneumonia.system.launch`),
and atomic, umask-following file writes (:mod:`~pneumonia.system.files`)."""
