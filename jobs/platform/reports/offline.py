"""Data Docs that render with no network.

GX 1.x writes CDN links (Bootstrap, jQuery, bootstrap-table, Font Awesome, Vega, ...) into its pages and has no
setting for local assets. After each Data Docs build, :func:`make_offline` copies the vendored, pinned copies of
those assets (``jobs/platform/reports/vendor``, from their npm packages: see ``scripts/vendor_web_assets.py``) into the
site and points every page at them with relative paths. ``integrity``/``crossorigin`` attributes go: they make a
browser refuse ``file://`` loads. A page that still loads something from the network after the rewrite (a GX
upgrade adding a CDN link) is an error, so it cannot ship silently.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

VENDOR = Path(__file__).resolve().parent / "vendor"
SITE_VENDOR = Path("static") / "vendor"  # inside a Data Docs site
_BT = "bootstrap-table@1.19.1/dist"
_FILTER = f"{_BT}/extensions/filter-control/bootstrap-table-filter-control"
# Every CDN URL GX 1.x pages use -> the vendored file (relative to the vendor folder). GX links the filter-control
# stylesheet of bootstrap-table 1.19.0 next to the 1.19.1 scripts; the 1.19.1 file serves both.
CDN_FILES = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap@4.3.1/dist/css/bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap@4.3.1/dist/js/bootstrap.min.js",
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery@3.7.1/dist/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper.js@1.12.9/dist/umd/popper.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": f"{_BT}/bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": f"{_BT}/bootstrap-table.min.js",
    f"https://unpkg.com/{_FILTER}.min.js": f"{_FILTER}.min.js",
    f"https://unpkg.com/{_FILTER.replace('1.19.1', '1.19.0')}.min.css": f"{_FILTER}.min.css",
    f"https://unpkg.com/{_FILTER.replace('1.19.1', '1.19.0')}.css": f"{_FILTER}.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css": "bootstrap-datepicker@1.9.0/dist/css/bootstrap-datepicker.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js": "bootstrap-datepicker@1.9.0/dist/js/bootstrap-datepicker.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": "@fortawesome__fontawesome-free@6.6.0/css/all.min.css",
    "https://cdn.jsdelivr.net/npm/vega@5": "vega@5.33.1/build/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite@5.23.0/build/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed@6.29.0/build/vega-embed.min.js",
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css": "@forevolve__bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css",
}
# GX's logos live on S3; the site's own static/images folder (copied by GX) has them.
_LOGO = re.compile(r"https://great-expectations-web-assets\.s3\.[a-z0-9-]+\.amazonaws\.com/[A-Za-z_-]+\.png[^\"')]*")
_SRI = re.compile(r'\s+(?:integrity|crossorigin)="[^"]*"')
# What a browser would fetch from the network: scripts, stylesheets, images, CSS url()s and @imports.
_REMOTE = re.compile(
    r"<(?:script|img|source|iframe)\b[^>]*\bsrc\s*=\s*[\"']?https?://[^\"'\s>]+"
    r"|<link\b[^>]*\bhref\s*=\s*[\"']?https?://[^\"'\s>]+"
    r"|url\(\s*[\"']?https?://[^)\"']+|@import\s+[\"']https?://[^\"']+",
    re.IGNORECASE,
)


class OnlineAssetError(RuntimeError):
    """A page still loads something from the network (a GX upgrade added a CDN link): vendor it."""


def remote_loads(text: str) -> list[str]:
    """The network loads left in an HTML or CSS text (links a reader clicks do not count)."""
    return _REMOTE.findall(text)


def install_vendor(site: Path) -> Path:
    """Copy the vendored assets into the site (once per manifest version): ``<site>/static/vendor``."""
    target = site / SITE_VENDOR
    manifest = (VENDOR / "MANIFEST.json").read_text()
    if not (target / "MANIFEST.json").exists() or (target / "MANIFEST.json").read_text() != manifest:
        staging = target.with_name(f".vendor-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(VENDOR, staging)
        shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)  # atomic: a reader sees the old copy or the new one
        except OSError:  # another process installed the same copy meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    return target


def localize(text: str, page: Path, site: Path) -> str:
    """``text`` of ``page`` (HTML or CSS inside ``site``) with every CDN load pointing at the site's copy."""
    vendor_rel = Path(os.path.relpath(site / SITE_VENDOR, page.parent)).as_posix()
    images_rel = Path(os.path.relpath(site / "static" / "images", page.parent)).as_posix()
    for url, rel in CDN_FILES.items():
        text = text.replace(f'"{url}"', f'"{vendor_rel}/{rel}"')
    text = _LOGO.sub(f"{images_rel}/logo-long.png", text)
    return _SRI.sub("", text)


def make_offline(site: Path) -> int:
    """Rewrite every page and stylesheet of a Data Docs site for offline use; returns the files changed.

    Each file is replaced atomically (write aside, rename), so a reader or a concurrent rewrite never sees half a
    page; the rewrite is idempotent.
    """
    install_vendor(site)
    changed = 0
    leftovers: dict[str, list[str]] = {}
    for page in [*site.rglob("*.html"), *(site / "static" / "styles").rglob("*.css")]:
        if SITE_VENDOR.as_posix() in page.relative_to(site).as_posix():
            continue
        text = page.read_text(encoding="utf-8")
        new = localize(text, page, site)
        if new != text:
            tmp = page.with_name(f".{page.name}.{os.getpid()}.tmp")
            tmp.write_text(new, encoding="utf-8")
            tmp.replace(page)
            changed += 1
        if remote := remote_loads(new):
            leftovers[str(page.relative_to(site))] = remote
    if leftovers:
        raise OnlineAssetError(f"Data Docs pages still load from the network: {json.dumps(leftovers)[:2000]}")
    return changed
