"""The digits net trained once per test session (in pytest's temporary folder)."""

from __future__ import annotations

import pytest

from tests.slim.digits_bn import Trained, train


@pytest.fixture(scope="session")
def digits_bn(tmp_path_factory) -> Trained:
    return train(tmp_path_factory.mktemp("digits_bn"))
