"""The house style of every PNG the commands draw (the report's figures, export's inference chart).

    plt = pyplot()                       # matplotlib on the Agg backend, styled
    fig, ax = plt.subplots(figsize=(width(5), 4))
    save(fig, path)                      # tight bounding box, closed

Figures are drawn at the pixel size they are shown at: DPI dots per inch, at most MAX_WIDTH_IN inches wide, so
in the report's column (about 1150 px) an image is never scaled down and its 10-point text stays ~14 px.
"""

from __future__ import annotations

import warnings
from pathlib import Path

DPI = 100
MAX_WIDTH_IN = 11.0  # 1100 px: the report's column holds it at its own size
STYLE = {"figure.dpi": DPI, "savefig.dpi": DPI, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
         "axes.spines.right": False, "font.size": 10, "axes.titlesize": 11, "legend.fontsize": 9,
         "legend.frameon": False}


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), with the house style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt


def width(inches: float) -> float:
    """A figure width, capped so the report never has to shrink the image (and its text)."""
    return min(float(inches), MAX_WIDTH_IN)


def save(fig, path: Path) -> Path:
    """Write the figure as a PNG (tight box, house DPI) and close it."""
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tight_layout's "not compatible" notes on twin-axes figures
        fig.savefig(path, bbox_inches="tight", dpi=DPI)
    plt.close(fig)
    return Path(path)
