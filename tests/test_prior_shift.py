"""prior_shift=em: re-based probabilities, and the refusals where its assumption cannot hold."""

from __future__ import annotations

import pytest
import torch

from pneumonia.decision.prior_shift import EM_MIN_IMAGES, adapt_to_prevalence

from .test_calibration import exact_posterior, gaussian_sample
from .test_decision import bayes_decision


def test_em_prior_shift_rebases_probabilities_on_the_images_prevalence() -> None:
    x, targets = gaussian_sample(5000, 0.8, seed=6)
    probs = exact_posterior(x, 0.5).float()
    adapted, record = adapt_to_prevalence(probs, bayes_decision(), "em")
    assert record["estimated_prevalence"] == pytest.approx(targets.float().mean().item(), abs=0.03)
    torch.testing.assert_close(adapted.double(), exact_posterior(x, record["estimated_prevalence"]))
    # The Bayes decision at 0.5 on re-based probabilities makes fewer errors on this population.
    errors_before = ((probs > 0.5).long() != targets).sum()
    errors_after = ((adapted > 0.5).long() != targets).sum()
    assert errors_after < errors_before
    same, none = adapt_to_prevalence(probs, bayes_decision(), "none")
    assert none is None
    assert same is probs


def test_em_prior_shift_refuses_a_threshold_tuned_on_validation() -> None:
    with pytest.raises(ValueError, match="prior_shift=none"):
        adapt_to_prevalence(torch.rand(10), bayes_decision(threshold_rule="f1"), "em")
    with pytest.raises(ValueError, match="none, em"):
        adapt_to_prevalence(torch.rand(10), bayes_decision(), "bbse")


def test_em_prior_shift_refuses_too_few_images_and_names_the_way_out() -> None:
    with pytest.raises(
        ValueError, match=rf"at least {EM_MIN_IMAGES}.*there are 3.*prior_shift=none"
    ):
        adapt_to_prevalence(torch.tensor([0.2, 0.5, 0.504]), bayes_decision(), "em")
    probs = torch.rand(EM_MIN_IMAGES, generator=torch.Generator().manual_seed(0))
    _, record = adapt_to_prevalence(probs, bayes_decision(), "em")
    assert record["num_images"] == EM_MIN_IMAGES
    assert record["converged"] is True


def test_em_refuses_images_mostly_unlike_the_training_images() -> None:
    probs = torch.rand(40, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"only their proportions changed.*60% of these images"):
        adapt_to_prevalence(probs, bayes_decision(), "em", flagged_share=0.6)
    _, record = adapt_to_prevalence(probs, bayes_decision(), "em", flagged_share=0.1)
    assert record["method"] == "em"


def separated(n: int, prevalence: float, seed: int, normal_shift: float = 0.0):
    """Probabilities of well-separated classes (scores N(-4, 1.2) and N(4, 1.2), as a
    Kermany model's validation images), the NORMAL ones moved by ``normal_shift``."""
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, generator=g) < prevalence).long()
    z = torch.randn(n, generator=g) * 1.2 + 8.0 * targets - 4.0 + normal_shift * (targets == 0)
    return torch.sigmoid(z), targets


def test_em_says_when_the_images_changed_and_not_only_their_share(caplog) -> None:
    from pneumonia.decision.prior_shift import class_probabilities

    reference = class_probabilities(*separated(500, 0.7, seed=1))  # validation
    assert reference["images"][0] + reference["images"][1] == 500
    probs, targets = separated(624, 0.625, seed=2)  # label shift alone
    with caplog.at_level("WARNING"):
        _, record = adapt_to_prevalence(probs, bayes_decision(), "em", reference=reference)
    assert record["mixture_check"]["p_value"] > 0.01
    assert record["estimated_prevalence"] == pytest.approx(0.625, abs=0.04)
    assert "images themselves changed" not in caplog.text
    # as on the official test split: its NORMAL images score higher than validation's
    probs, targets = separated(624, 0.625, seed=2, normal_shift=3.0)
    with caplog.at_level("WARNING"):
        _, record = adapt_to_prevalence(probs, bayes_decision(), "em", reference=reference)
    assert record["mixture_check"]["p_value"] < 0.01
    assert record["estimated_prevalence"] > 0.65  # the bias it warns of
    assert "images themselves changed" in caplog.text
    assert "pneumonia-recalibrate" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        _, record = adapt_to_prevalence(probs, bayes_decision(), "em")
    assert record["mixture_check"] is None
    assert "cannot be checked" in caplog.text
