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
