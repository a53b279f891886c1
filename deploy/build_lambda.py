"""Build the Lambda package of deploy/security-account.yaml from the project's own files.

    python deploy/build_lambda.py [--out dist/stanch-lambda.zip] [--python 3.12] [--no-deps]

pip builds the project (this checkout, nothing else) and installs it with its runtime dependencies as
manylinux wheels for the Lambda runtime into a staging directory, which is zipped with fixed
timestamps (the same inputs give the same zip). Upload it to the template's CodeBucket/CodeKey.
`--no-deps` packages the project alone (a quick check of what goes in)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: what the package must hold: the handlers the template names, the packaged playbooks and config
REQUIRED = ("runner/lambda_handler.py", "runner/live_drill.py", "playbooks/cryptojacking-root-key.yaml",
            "config/stanch.toml")
EPOCH = (1980, 1, 1, 0, 0, 0)


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


def stage(target: Path, python: str, deps: bool) -> None:
    """pip-install this project (and, unless `deps` is off, its runtime dependencies for Lambda) into target."""
    with tempfile.TemporaryDirectory() as wheels:
        pip("wheel", "--no-deps", "-w", wheels, str(ROOT))
        wheel = next(Path(wheels).glob("stanch-*.whl"))
        if deps:
            pip("install", "--target", str(target), "--platform", "manylinux2014_x86_64", "--implementation", "cp",
                "--python-version", python, "--only-binary=:all:", "--upgrade", str(wheel))
        else:
            pip("install", "--target", str(target), "--no-deps", str(wheel))


def write_zip(source: Path, out: Path) -> list[str]:
    """Zip `source` deterministically (sorted, fixed times, no bytecode caches); return the names."""
    names = sorted(p.relative_to(source).as_posix() for p in source.rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in names:
            info = zipfile.ZipInfo(name, EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, (source / name).read_bytes())
    return names


def build(out: Path, python: str = "3.12", deps: bool = True) -> list[str]:
    with tempfile.TemporaryDirectory() as staging:
        stage(Path(staging), python, deps)
        names = write_zip(Path(staging), out)
    missing = [r for r in REQUIRED if r not in names]
    if missing:
        raise SystemExit(f"build_lambda: the package lacks {', '.join(missing)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "stanch-lambda.zip")
    parser.add_argument("--python", default="3.12", help="the Lambda runtime's Python version")
    parser.add_argument("--no-deps", action="store_true", help="the project alone, without its dependencies")
    args = parser.parse_args(argv)
    names = build(args.out, args.python, not args.no_deps)
    sys.stderr.write(f"{args.out}: {len(names)} files, {args.out.stat().st_size // 1024} KiB\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
