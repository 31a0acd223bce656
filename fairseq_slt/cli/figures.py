"""matplotlib for the tools' plots: no display needed, figures written atomically."""
import io

from ..pruning import atomic_write_stream


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, target: str) -> None:
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, dpi=120, format="png")
    image.seek(0)
    atomic_write_stream(image, target)
