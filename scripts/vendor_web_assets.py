"""Vendor the web assets GX Data Docs load from CDNs, pinned, from their npm packages (run once per upgrade).

GX 1.x writes CDN links into its pages and has no setting for local assets; `jobs/platform/reports/offline.py` points
the pages at these copies after every Data Docs build, so they render behind a firewall. Writes the files and their
licences under jobs/platform/reports/vendor/<package>@<version>/ and MANIFEST.json (source tarball, sha256 of each
file);
`tests/test_reports_offline.py` checks the files against the manifest.

    python scripts/vendor_web_assets.py            # needs the npm registry (https://registry.npmjs.org)
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import urllib.request
from pathlib import Path

REGISTRY = "https://registry.npmjs.org"
OUT = Path(__file__).resolve().parent.parent / "jobs" / "platform" / "reports" / "vendor"
# package, version, licence (SPDX, from its package.json), files inside the tarball's package/ folder
PACKAGES = [
    ("bootstrap", "4.3.1", "MIT", ["LICENSE", "dist/css/bootstrap.min.css", "dist/js/bootstrap.min.js"]),
    ("jquery", "3.7.1", "MIT", ["LICENSE.txt", "dist/jquery.min.js"]),
    ("popper.js", "1.12.9", "MIT", ["dist/umd/popper.min.js"]),
    (
        "bootstrap-table",
        "1.19.1",
        "MIT",
        [
            "LICENSE",
            "dist/bootstrap-table.min.css",
            "dist/bootstrap-table.min.js",
            "dist/extensions/filter-control/bootstrap-table-filter-control.css",
            "dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
            "dist/extensions/filter-control/bootstrap-table-filter-control.min.js",
        ],
    ),
    (
        "bootstrap-datepicker",
        "1.9.0",
        "Apache-2.0",
        ["LICENSE", "dist/css/bootstrap-datepicker.min.css", "dist/js/bootstrap-datepicker.min.js"],
    ),
    (
        "@fortawesome/fontawesome-free",
        "6.6.0",
        "(CC-BY-4.0 AND OFL-1.1 AND MIT)",
        [
            "LICENSE.txt",
            "css/all.min.css",
            "webfonts/fa-brands-400.woff2",
            "webfonts/fa-regular-400.woff2",
            "webfonts/fa-solid-900.woff2",
            "webfonts/fa-v4compatibility.woff2",
            "webfonts/fa-brands-400.ttf",
            "webfonts/fa-regular-400.ttf",
            "webfonts/fa-solid-900.ttf",
            "webfonts/fa-v4compatibility.ttf",
        ],
    ),
    ("vega", "5.33.1", "BSD-3-Clause", ["build/vega.min.js"]),
    ("vega-lite", "5.23.0", "BSD-3-Clause", ["LICENSE", "build/vega-lite.min.js"]),
    ("vega-embed", "6.29.0", "BSD-3-Clause", ["LICENSE", "build/vega-embed.min.js"]),
    ("@forevolve/bootstrap-dark", "1.1.0", "MIT", ["LICENSE", "dist/css/bootstrap-prefers-dark.css"]),
]


def main() -> None:
    manifest = {}
    for name, version, licence, files in PACKAGES:
        tarball = f"{REGISTRY}/{name}/-/{name.split('/')[-1]}-{version}.tgz"
        with urllib.request.urlopen(tarball, timeout=120) as r:
            data = r.read()
        folder = OUT / f"{name.replace('/', '__')}@{version}"
        entry = {
            "tarball": tarball,
            "tarball_sha256": hashlib.sha256(data).hexdigest(),
            "license": licence,
            "files": {},
        }
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for rel in files:
                content = tar.extractfile(f"package/{rel}").read()
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                (folder / rel).write_bytes(content)
                entry["files"][rel] = hashlib.sha256(content).hexdigest()
        manifest[f"{name}@{version}"] = entry
        print(f"{name}@{version}: {len(files)} files")
    (OUT / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
