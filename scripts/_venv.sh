# Sourced by the other scripts: create .venv (once) and install marsconn into it, again only
# when what the install depends on changed.
# Usage: . scripts/_venv.sh [extra]   e.g. ". scripts/_venv.sh test"
#
# The install is skipped when the stamp of the last successful install with that extra
# ($VENV/.marsconn-install[-extra]) matches a hash of pyproject.toml, setup.py and the venv's
# Python version: the package is installed editable, so changes to its source need no
# reinstall. MARSCONN_REINSTALL=1 forces one.
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
stamp=$(
    {
        cat pyproject.toml setup.py
        "$VENV/bin/python" -c 'import sys; print(sys.version)'
    } | "$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
)
# One stamp per extra; an install with [test] also stands for the plain one.
stamp_file="$VENV/.marsconn-install${extra:+-$extra}"
if [ "${MARSCONN_REINSTALL:-0}" != 1 ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
    echo "marsconn${extra:+ with [$extra]} is installed in $VENV and up to date" >&2
else
    echo "installing marsconn${extra:+ with [$extra]} into $VENV" >&2
    rm -f "$VENV"/.marsconn-install*
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec"
    echo "$stamp" > "$stamp_file"
    if [ -n "$extra" ]; then
        echo "$stamp" > "$VENV/.marsconn-install"
    fi
fi
