# Sourced by the other scripts: create .venv (once) and install marsconn into it.
# Usage: . scripts/_venv.sh [extra]   e.g. ". scripts/_venv.sh test"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "marsconn needs Python >= 3.11; $PYTHON is $("$PYTHON" --version 2>&1)" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
extra=${1:-}
spec="."
[ -n "$extra" ] && spec=".[$extra]"
echo "installing marsconn${extra:+ with [$extra]} into $VENV" >&2
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec"
