from __future__ import annotations

from yolotune.errors import StepError


def test_a_step_error_drops_the_terminal_colours_of_the_library_it_quotes() -> None:
    error = StepError("finetune", "\x1b[34m\x1b[1mtrain: \x1b[0mNo labels found in labels/train.cache")
    assert str(error) == "finetune failed: train: No labels found in labels/train.cache"
    assert error.reason == "train: No labels found in labels/train.cache"
