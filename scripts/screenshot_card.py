"""Screenshot a Metaflow card with headless Chromium (Debian's ``chromium`` package), offline.

    # from a card HTML file written by `python flows/sso_flow.py card get RUN/compare --id compare c.html`
    python scripts/screenshot_card.py c.html docs/compare-card.png
    # or let the script fetch the card of a run (run it where the flow ran)
    python scripts/screenshot_card.py --card RUN_ID/compare --id compare docs/compare-card.png

The card HTML is self-contained (its JavaScript renders the tables and Vega charts from embedded
data), so Chromium needs no network: every network-ish feature is switched off and a throwaway
profile is used. ``--virtual-time-budget`` lets the page finish rendering before the capture.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLOW = REPO / "flows" / "sso_flow.py"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError("no Chromium found (tried %s); on Debian: apt-get install -y chromium"
                            % ", ".join(CHROMIUM_NAMES))


def chromium_command(chromium: str, html: Path, png: Path, profile: str, *, width: int, height: int,
                     budget_ms: int) -> list[str]:
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
            f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
            f"--window-size={width},{height}", f"--screenshot={png}", html.resolve().as_uri()]


def screenshot(html: Path, png: Path, *, width: int = 1400, height: int = 1500, budget_ms: int = 8000,
               timeout_s: int = 180) -> Path:
    """Render ``html`` headless and write a ``width`` x ``height`` PNG to ``png``."""
    png = png.resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    if png.exists():
        png.unlink()
    with tempfile.TemporaryDirectory(prefix="sso-chromium-") as profile:
        cmd = chromium_command(find_chromium(), html, png, profile, width=width, height=height,
                               budget_ms=budget_ms)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}")
    return png


def fetch_card(card: str, card_id: str | None, out: Path) -> Path:
    """``python flows/sso_flow.py card get CARD [--id ID] OUT`` in the current directory."""
    cmd = [sys.executable, str(FLOW), "card", "get", card]
    if card_id:
        cmd += ["--id", card_id]
    subprocess.run(cmd + [str(out)], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("html", nargs="?", help="card HTML file (from `card get`)")
    p.add_argument("png", help="PNG to write")
    p.add_argument("--card", help="fetch this card first: RUN_ID/STEP[/TASK]")
    p.add_argument("--id", help="card id (with --card)")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=1500)
    args = p.parse_args(argv)
    if bool(args.html) == bool(args.card):
        p.error("give either a card HTML file or --card RUN_ID/STEP")
    with tempfile.TemporaryDirectory(prefix="sso-card-") as tmp:
        html = Path(args.html) if args.html else fetch_card(args.card, args.id, Path(tmp) / "card.html")
        png = screenshot(html, Path(args.png), width=args.width, height=args.height)
    print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
