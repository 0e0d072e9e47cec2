"""Sample nets shipped with dnntool (used by ``dnntool demo`` and the tests)."""

from pathlib import Path

SAMPLES = Path(__file__).resolve().parent


def sample(name: str) -> Path:
    """Path of a bundled sample file."""
    return SAMPLES / name
