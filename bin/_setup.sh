# Sourced by bin/demo and bin/test: find Python 3.12, create .venv, install requirements.
# Re-installs only when the requirements file changes.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

find_python() {
    local candidate
    for candidate in "${MCM_PYTHON:-}" python3.12 "$HOME/.pyenv/versions/3.12"*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do
        [ -n "$candidate" ] || continue
        if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    echo "Python 3.12 was not found: install it, or set MCM_PYTHON to its path." >&2
    return 1
}

setup_venv() {
    local requirements=$1
    if [ ! -x .venv/bin/python ]; then
        local python
        python=$(find_python)
        echo "Creating .venv with $python" >&2
        "$python" -m venv .venv
    fi
    local stamp=".venv/.installed-$(basename "$requirements")"
    local digest
    digest=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
        echo "Installing $requirements into .venv" >&2
        .venv/bin/python -m pip install --quiet --upgrade pip
        .venv/bin/python -m pip install --quiet -r "$requirements"
        echo "$digest" > "$stamp"
    fi
}
