"""Sphinx configuration of the course website (built by `make site`, see website/build_site.py).

The pages are Sphinx + MyST-NB (the engine of Jupyter Book 1) with the book theme. The lectures
come in already executed (`nb_execution_mode = "off"`); the assignments are the released notebooks,
shown without outputs. Everything the pages load is local: MathJax is copied from the
`sphinx-mathjax-offline` wheel, so the site works without any network (hubs are often firewalled).
"""
import shutil
from importlib.metadata import distribution
from pathlib import Path

project = "Interpretability of machine-learning models"
author = "the course authors"
copyright = "the course authors, MIT licence"
html_title = "Interpretability of ML models · 机器学习模型的可解释性"

extensions = ["myst_nb", "sphinx.ext.mathjax"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
myst_dmath_double_inline = True  # $$...$$ inside a paragraph or list item, as JupyterLab shows it
exclude_patterns = ["_build", "**.ipynb_checkpoints", "build_site.py"]
# a page's own "##" sub-headings below a notebook title are fine; the website never fails on the
# authors' heading styles
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]

# --- notebooks: executed copies come in, nothing is executed here
nb_execution_mode = "off"
nb_merge_streams = True
nb_ipywidgets_js = {}  # widgets are for JupyterLab; the website loads nothing from a CDN
nb_output_stderr = "remove"  # warnings and progress bars are noise on a reading page

# --- HTML
html_theme = "sphinx_book_theme"
html_static_path = ["_static"]
html_favicon = "_static/favicon.svg"
html_context = {"default_mode": "light"}
html_css_files = ["course.css"]
html_copy_source = False  # no raw notebooks (with their base64 images) in the site
html_show_sourcelink = False
html_last_updated_fmt = None
html_theme_options = {
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "navigation_with_keys": False,
}
html_sidebars = {"**": ["navbar-logo.html", "glossary-link.html", "sbt-sidebar-nav.html"]}  # search: in the header
templates_path = ["_templates"]

# --- math, offline: MathJax 3 with every TeX extension in one file, plus its fonts
MATHJAX_DIST = Path(distribution("sphinx-mathjax-offline").locate_file("sphinx-mathjax-offline/static/mathjax"))
mathjax_path = "mathjax/tex-chtml-full.js"


def _copy_mathjax(app, exc):
    if exc is not None:
        return
    out = Path(app.outdir) / "_static" / "mathjax"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(MATHJAX_DIST / "tex-chtml-full.js", out / "tex-chtml-full.js")
    fonts = Path("output") / "chtml" / "fonts" / "woff-v2"
    shutil.copytree(MATHJAX_DIST / fonts, out / fonts, dirs_exist_ok=True)


def setup(app):
    app.connect("build-finished", _copy_mathjax)
