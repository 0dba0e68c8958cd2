"""Export a final-paper notebook to a self-contained HTML file (``course-lib export-paper``).

The notebook is first run top to bottom in a fresh kernel (so the figures in the paper come
from the code in the paper), then written as one HTML file with the figures embedded, which
any browser opens offline and prints to PDF. Nothing is downloaded; math is typeset by MathJax
when the page is opened online and shown as TeX source otherwise.

A PDF straight from the notebook needs a LaTeX installation (``xelatex``); ``to="pdf"`` uses it
when it is on the PATH and otherwise says so, rather than trying to download anything.
"""
from __future__ import annotations

import shutil
from pathlib import Path


def export_paper(
    notebook: str | Path,
    out: str | Path | None = None,
    *,
    to: str = "html",
    execute: bool = True,
    hide_code: bool = False,
    keep_guidance: bool = False,
    timeout: int = 600,
) -> Path:
    """Write ``notebook`` as HTML (or PDF) next to it, or to ``out``; returns the file written.

    execute: run the notebook in a fresh kernel first (in its own folder), so outputs match the
    code; hide_code: leave code cells' inputs out (outputs stay), for a blog-style paper;
    keep_guidance: keep the template's guidance cells (tagged ``guidance``), which are left out
    by default so that the page reads as the paper.
    """
    import nbformat
    from nbconvert import HTMLExporter, PDFExporter

    src = Path(notebook)
    if not src.is_file():
        raise FileNotFoundError(f"no notebook at {src}")
    if to not in ("html", "pdf"):
        raise ValueError(f"to must be 'html' or 'pdf', got {to!r}")
    if to == "pdf" and shutil.which("xelatex") is None:
        raise RuntimeError(
            "a PDF needs LaTeX (xelatex), which is not installed here; export to HTML "
            "(`course-lib export-paper PAPER.ipynb`) and print that page to PDF from your browser"
        )
    nb = nbformat.read(str(src), as_version=4)
    if execute:
        import os

        from nbclient import NotebookClient

        # figures must reach the page: the inline backend, whatever MPLBACKEND says outside
        old = os.environ.get("MPLBACKEND")
        os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
        try:
            NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(src.parent.resolve())}}).execute()
        finally:
            if old is None:
                os.environ.pop("MPLBACKEND", None)
            else:
                os.environ["MPLBACKEND"] = old
    if not keep_guidance:
        nb.cells = [c for c in nb.cells if "guidance" not in c.metadata.get("tags", [])]
    exporter = HTMLExporter(template_name="lab") if to == "html" else PDFExporter()
    exporter.exclude_input = hide_code
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": src.stem, "path": str(src.parent)}})
    dst = Path(out) if out is not None else src.with_suffix(f".{to}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(body, bytes):
        dst.write_bytes(body)
    else:
        dst.write_text(body, encoding="utf-8")
    return dst


def add_command(sub) -> None:
    """``course-lib export-paper`` (registered by course_lib.cli)."""
    import sys

    def run(args) -> int:
        try:
            out = export_paper(args.notebook, args.out, to=args.to, execute=not args.no_execute, hide_code=args.hide_code,
                              keep_guidance=args.keep_guidance)
        except (FileNotFoundError, RuntimeError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"wrote {out}")
        return 0

    p = sub.add_parser("export-paper", help="run a final-paper notebook and export it to one HTML file (PDF with --to pdf if LaTeX is installed)")
    p.add_argument("notebook", help="the paper notebook, e.g. assignments/final_paper/final_paper.ipynb")
    p.add_argument("-o", "--out", help="output file (default: next to the notebook, .html)")
    p.add_argument("--to", choices=["html", "pdf"], default="html")
    p.add_argument("--no-execute", action="store_true", help="export the outputs saved in the notebook instead of running it first")
    p.add_argument("--hide-code", action="store_true", help="leave out code cells' inputs (outputs and figures stay)")
    p.add_argument("--keep-guidance", action="store_true", help="keep the template's guidance cells (left out by default)")
    p.set_defaults(func=run)
