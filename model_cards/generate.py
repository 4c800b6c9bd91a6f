"""Write one model card per released PaCa-ViT checkpoint into this folder, from `pacavit.hub.releases`.

    python model_cards/generate.py           # (re)write model_cards/*.md
    python model_cards/generate.py --check   # exit 1 if a card differs from what the data gives

The cards are generated, never edited by hand: change `src/pacavit/hub/releases.py` (the paper's numbers and the
README's errors) or `src/pacavit/hub/cards.py` (the layout), then run this script.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pacavit.hub.cards import render_card
from pacavit.hub.releases import RELEASES, card_name

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare the cards with the data")
    args = parser.parse_args(argv)
    stale = []
    for release in RELEASES:
        path, text = HERE / card_name(release), render_card(release)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale cards (run python model_cards/generate.py): {', '.join(stale)}")
        return 1
    print(f"{len(RELEASES)} cards {'up to date' if args.check else 'written'} in {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
