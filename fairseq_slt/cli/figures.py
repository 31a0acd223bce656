"""matplotlib for the tools' plots: no display needed, figures written atomically."""
import os


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, target: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(target + ".part.png", dpi=120)
    os.replace(target + ".part.png", target)
