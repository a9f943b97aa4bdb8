"""The pretraining config: one spelling of "full schedule" for max_steps everywhere."""

from __future__ import annotations

import pytest
import yaml

from xkd.errors import UsageError
from xkd.paths import REPO
from xkd.train.config import FULL_SCHEDULE, load_config


def test_zero_max_steps_is_the_full_schedule_everywhere():
    assert FULL_SCHEDULE == 0
    assert load_config("tiny", [f"train.max_steps={FULL_SCHEDULE}"]).train.max_steps == 0
    assert load_config("xkd_base").train.max_steps == FULL_SCHEDULE  # the paper's configs default to it
    # params.yaml feeds `--max-steps ${pretrain.max_steps}` in dvc.yaml: it must render as an int
    assert isinstance(yaml.safe_load((REPO / "params.yaml").read_text())["pretrain"]["max_steps"], int)


@pytest.mark.parametrize("bad", ["null", "-1", "true"])
def test_other_spellings_are_refused_with_the_one_that_works(bad):
    with pytest.raises(UsageError, match=r"train.max_steps must be a step count >= 0.*0 means the full schedule"):
        load_config("tiny", [f"train.max_steps={bad}"])
