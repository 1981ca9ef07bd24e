import pytest

from .driver import VERSIONS


@pytest.fixture(params=VERSIONS)
def version(request) -> str:
    """Each imitated release with distinct behaviour."""
    return request.param
