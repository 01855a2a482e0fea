"""Running a notebook headless with parameters, the way papermill does, on nbclient alone.

The notebook's first code cell tagged ``parameters`` holds the defaults (``MODEL_PATH = ""``).
``execute_notebook`` inserts a cell right after it that assigns the given values, runs every cell
in a fresh kernel of the current Python interpreter, and writes the executed notebook (with its
outputs) atomically. A failing cell becomes a ``PipelineError`` that names the cell.
"""

from __future__ import annotations

import ast
import copy
import os
import sys
import tempfile
from pathlib import Path

from emotion_classifier import files
from emotion_classifier.errors import PipelineError

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
KERNEL_NAME = "python3"


def execute_notebook(
    notebook_path: str | Path,
    output_path: str | Path,
    parameters: dict[str, object],
    timeout: int = 600,
    working_directory: str | Path | None = None,
):
    """Execute ``notebook_path`` with ``parameters`` injected; write the result to ``output_path``.

    ``parameters`` maps names assigned in the ``parameters`` cell to new values (anything whose
    ``repr`` is valid Python: strings, numbers, booleans, lists, ``None``); a name that the cell
    does not define is a ``ValueError``, so a typo never goes unnoticed. Cells run with the
    working directory ``working_directory``, by default the notebook's own folder (the repository
    root for ``demo.ipynb``), each under ``timeout`` seconds. Returns the executed notebook node.
    """
    import nbclient
    import nbclient.exceptions
    import nbformat

    notebook_path = Path(notebook_path)
    output_path = Path(output_path)
    if not notebook_path.is_file():
        raise PipelineError(f"notebook not found: {notebook_path}")
    working_directory = Path(working_directory) if working_directory else notebook_path.parent
    notebook = nbformat.read(notebook_path, as_version=4)
    notebook = inject_parameters(notebook, parameters)

    with tempfile.TemporaryDirectory(prefix="kernelspec-") as kernel_folder:
        kernel_manager = _current_interpreter_kernel_manager(Path(kernel_folder))
        client = nbclient.NotebookClient(
            notebook,
            km=kernel_manager,
            timeout=timeout,
            kernel_name=KERNEL_NAME,
            resources={"metadata": {"path": str(working_directory.resolve())}},
        )
        # TensorFlow's C++ start-up messages would otherwise fill the notebook's outputs.
        kernel_environment = {**os.environ}
        kernel_environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            client.execute(env=kernel_environment)
        except nbclient.exceptions.CellExecutionError as error:
            _write_notebook(output_path, notebook)
            raise PipelineError(
                f"{notebook_path}: {_describe_failed_cell(notebook)} failed; the partly executed "
                f"notebook is in {output_path}.\n{_last_error_line(error)}"
            ) from error
        except nbclient.exceptions.CellTimeoutError as error:
            _write_notebook(output_path, notebook)
            raise PipelineError(
                f"{notebook_path}: a cell ran longer than {timeout} s; the partly executed notebook "
                f"is in {output_path}"
            ) from error
    _write_notebook(output_path, notebook)
    return notebook


def inject_parameters(notebook, parameters: dict[str, object]):
    """Return a copy of ``notebook`` with a cell assigning ``parameters`` after the parameters cell.

    A parameters cell left over from an earlier injection is replaced, not stacked.
    """
    import nbformat

    notebook = copy.deepcopy(notebook)
    notebook.cells = [cell for cell in notebook.cells if INJECTED_TAG not in _tags(cell)]
    parameter_positions = [
        position
        for position, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and PARAMETERS_TAG in _tags(cell)
    ]
    if not parameter_positions:
        raise ValueError(f"the notebook has no code cell tagged {PARAMETERS_TAG!r}")
    position = parameter_positions[0]
    known_names = _assigned_names(notebook.cells[position].source)
    unknown = sorted(set(parameters) - known_names)
    if unknown:
        raise ValueError(
            f"unknown notebook parameters {', '.join(unknown)}; the parameters cell defines "
            f"{', '.join(sorted(known_names)) or 'nothing'}"
        )
    lines = ["# Parameters injected by emotion_classifier.notebook.execute_notebook"]
    for name, value in parameters.items():
        text = repr(str(value) if isinstance(value, Path) else value)
        try:
            ast.literal_eval(text)
        except (ValueError, SyntaxError) as error:
            raise ValueError(f"notebook parameter {name}: {value!r} cannot be written as a literal") from error
        lines.append(f"{name} = {text}")
    injected = nbformat.v4.new_code_cell(source="\n".join(lines), metadata={"tags": [INJECTED_TAG]})
    notebook.cells.insert(position + 1, injected)
    return notebook


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _assigned_names(source: str) -> set[str]:
    """Names assigned at the top level of a cell (``NAME = value`` and ``NAME: type = value``)."""
    names: set[str] = set()
    for statement in ast.parse(source).body:
        if isinstance(statement, ast.Assign):
            targets = statement.targets
        elif isinstance(statement, ast.AnnAssign):
            targets = [statement.target]
        else:
            continue
        names.update(target.id for target in targets if isinstance(target, ast.Name))
    return names


def _current_interpreter_kernel_manager(kernel_folder: Path):
    """A kernel manager whose ``python3`` kernel is this very interpreter (``sys.executable``).

    A ``python3`` kernelspec installed elsewhere (another virtual environment, the system's
    Jupyter) could otherwise win, and the notebook would run without this package installed.
    The spec written here names ``sys.executable`` explicitly and is the only one searched.
    """
    import ipykernel.kernelspec
    import jupyter_client
    import jupyter_client.kernelspec

    spec_folder = kernel_folder / KERNEL_NAME
    ipykernel.kernelspec.write_kernel_spec(
        spec_folder,
        overrides={"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]},
    )
    spec_manager = jupyter_client.kernelspec.KernelSpecManager(
        kernel_dirs=[str(kernel_folder)], ensure_native_kernel=False
    )
    return jupyter_client.KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=spec_manager)


def _describe_failed_cell(notebook) -> str:
    """Name the first cell with an error output: its position and its first line of code."""
    for position, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                first_line = next((line for line in cell.source.splitlines() if line.strip()), "")
                return f"cell {position} ({first_line.strip()!r}) raised {output.get('ename', 'an error')}"
    return "a cell"


def _last_error_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _write_notebook(path: Path, notebook) -> None:
    import nbformat

    with files.atomic_path(path) as temporary:
        nbformat.write(notebook, str(temporary))
