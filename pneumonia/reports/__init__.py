"""Figures (:mod:`~pneumonia.reports.plots`) and self-contained HTML pages
(:mod:`~pneumonia.reports.pages`) for TensorBoard, report.md and report.html."""
