"""Hand a failing stage over: a standalone reproduction that needs only ``max`` and ``numpy``.

``case.py`` captures one stage as the harness ran it (input, PyTorch's and float64's output, the
tolerance, the harness's metrics); ``script.py`` writes it as ``repro.py``, plain ``max.graph.ops``
from templates with the variant's switches baked in as constants; ``folder.py`` writes the folder;
``minimise.py`` shrinks a failing block to its smallest failing sub-module and shape; ``cli.py``
is ``python -m harness repro``.
"""
