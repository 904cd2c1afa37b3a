"""Fixtures for the adapter tests: the real public datasets live OUTSIDE the repo, in ../shared/data
(relative to the repo root); they are never copied in. Tests needing one skip when it is absent."""
from __future__ import annotations

import pytest

from support import shared


@pytest.fixture(scope="session")
def kuairand():
    from onerec.data.kuairand import load
    return load(shared("kuairand_pure_partial"))


@pytest.fixture(scope="session")
def beauty_s3rec():
    from onerec.data.amazon import load_s3rec
    return load_s3rec(shared("amazon14_beauty_5core"))


@pytest.fixture(scope="session")
def beauty_letter():
    from onerec.data.amazon import load_letter
    return load_letter(shared("amazon14_beauty_5core") / "letter_format")


@pytest.fixture(scope="session")
def scientific():
    from onerec.data.amazon import load_letter
    return load_letter(shared("amazon_scientific_5core_text"))


@pytest.fixture(scope="session")
def ml100k():
    from onerec.data.movielens import load_recbole
    return load_recbole(shared("movielens_100k_recbole"))
