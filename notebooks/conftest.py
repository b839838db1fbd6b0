"""nbval over the notebooks: 08_huggingface needs transformers, an optional extra; without it, it skips and says why."""
from __future__ import annotations

import pytest

NEEDS_TRANSFORMERS = "08_huggingface.ipynb"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    from vit_inspect.errors import VitInspectError
    from vit_inspect.huggingface import require_transformers

    try:
        require_transformers()
    except VitInspectError as err:
        skip = pytest.mark.skip(reason=str(err))
        for item in items:
            if item.path.name == NEEDS_TRANSFORMERS:
                item.add_marker(skip)
