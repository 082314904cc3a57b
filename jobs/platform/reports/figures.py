"""Plots embedded in self-contained pages: PNG bytes as base64, for ``<img src="data:image/png;base64,...">``."""

from __future__ import annotations

import base64
import io


def png_base64(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()
