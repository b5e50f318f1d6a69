import pytest


@pytest.fixture(scope="session")
def embedded():
    """(model, tokenizer) of the embedded default; materialised once per machine (~1 min)."""
    from fpq_core.models import load_model

    return load_model()
