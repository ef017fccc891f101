"""Remote shell scripts for the integrity steps: one place to read what a remote host
must be able to do.

Every script is fixed text run as ``sh -c SCRIPT sh ARGS...``: paths and names only
ever arrive as positional arguments or NUL-separated records on stdin, never spliced
into the text, and ``ssh.run_remote`` quotes the whole command once.

What each needs on the remote host (POSIX ``sh``, ``find``, ``xargs -0``, plus):

- ``HASH_PROBE``: ``command -v``; lists which hash tools exist.
- ``HASH_TREE``: the chosen tool (``xxhsum`` for xxh128, ``sha256sum`` or
  ``shasum -a 256``, ``md5sum`` or ``md5 -r``), each fed one file on stdin so that no
  tool ever prints a name (names with newlines cannot break the parse).
- ``FIND_FORMAT``: the listing format of ``verify.remote_find_argv`` (GNU ``find -printf``).
- ``DELETE_VERIFIED``: GNU ``find -printf`` to re-check each file just before its
  ``rm -f``; directories go with ``rmdir`` (only when empty), never ``rm -rf``.
- ``PRUNE``: ``dirname``, ``mktemp``, ``touch -r``, ``rm -rf`` inside the job's own
  staging dir only.
- ``WRITE_MHL``: ``mkdir``, ``cat``, ``printf``.
- ``SYNC``: ``sync -f PATH`` (GNU coreutils >= 8.24), else a plain ``sync``.
- ``DELETABLE``: GNU ``find -writable``; lists directories a move could not empty.
- ``SAME_STORAGE``, ``PROBE_FILE``: ``test -e``, ``dirname``, ``mktemp``, ``touch -r``;
  a probe file written on one side and looked for on the other.
- ``MERGE_TARGET``: ``test``, ``find -type l -print0``.

The Mac flavour of these (BSD ``find``/``stat``) is issue 17's work: today a host
without GNU ``find`` fails these steps with a clear error, before deleting anything.
"""

from __future__ import annotations

# Which of the known hash tools exist: one name per line.
HASH_PROBE = (
    'for t in xxhsum sha256sum shasum md5sum md5; do '
    'if command -v "$t" >/dev/null 2>&1; then printf "%s\\n" "$t"; fi; done'
)

# $1 algorithm (xxh128|sha256|md5); $@ files. For each: one line whose first word is the
# hash (or "!" when the file cannot be read), then the file's name and a NUL. For the
# few names a tool's own output could garble (newline, CR, backslash).
_HASH_FILES = (
    'a=$1; shift; '
    'case $a in '
    'xxh128) h() { xxhsum -H2; } ;; '
    'sha256) if command -v sha256sum >/dev/null 2>&1; then h() { sha256sum; }; '
    'else h() { shasum -a 256; }; fi ;; '
    'md5) if command -v md5sum >/dev/null 2>&1; then h() { md5sum; }; '
    'else h() { md5 -r; }; fi ;; '
    '*) exit 64 ;; esac; '
    'for f; do h < "$f" 2>/dev/null || echo "!"; printf "%s\\0" "$f"; done'
)

# $1 algorithm, $2 root, $3 _HASH_FILES. A directory: every regular file under it.
# First the plain names in batches, one tool per thousands of files ("HASH ./rel"
# lines: xxhsum, sha256sum, shasum and md5 -r all print the hash, spaces, the name),
# then a NUL, then the odd names through _HASH_FILES. A file root: _HASH_FILES alone.
# Exit 4 when the root is missing.
HASH_TREE = (
    'a=$1; r=$2; one=$3; '
    'case $a in '
    'xxh128) set -- xxhsum -H2 ;; '
    'sha256) if command -v sha256sum >/dev/null 2>&1; then set -- sha256sum; '
    'else set -- shasum -a 256; fi ;; '
    'md5) if command -v md5sum >/dev/null 2>&1; then set -- md5sum; else set -- md5 -r; fi ;; '
    '*) exit 64 ;; esac; '
    r"""nl=$(printf '\nx'); nl=${nl%x}; cr=$(printf '\r'); bs='*\\*'; """
    'if [ -d "$r" ] && [ ! -L "$r" ]; then cd -- "$r" || exit 4; '
    'find . -type f ! -name "*$nl*" ! -name "*$cr*" ! -name "$bs" -exec "$@" {} + '
    r'2>/dev/null; printf "\000"; '
    r'find . -type f \( -name "*$nl*" -o -name "*$cr*" -o -name "$bs" \) '
    '-exec sh -c "$one" sh "$a" {} + ; '
    r'elif [ -f "$r" ]; then printf "\000"; sh -c "$one" sh "$a" "$r"; '
    'else echo "No such file or directory: $r" >&2; exit 4; fi'
)

# The integrity listing of a tree: kind/size/mtime/inode/relative path, NUL-separated.
FIND_FORMAT = "%y/%s/%T@/%i/%P\\0"

# $1 root, $2 _DELETE_RECORDS, $3 1 to remove the root too (a folder job). stdin: NUL-separated records "f/<size>/<mtime>/<inode>/./<rel>" (files, to
# delete only if still exactly so) and "d/0/0/0/./<rel>" (directories, deepest first,
# removed only when empty). Prints "C<rel>\0" for a file that changed (kept), "K<rel>\0"
# for one that could not be removed, "N<rel>\0" for a directory not empty (kept). The
# root itself is removed last, if empty; if not, "R<rel>\0" for every file still in it.
_DELETE_RECORDS = (
    'for r; do k=${r%%/*}; r=${r#*/}; s=${r%%/*}; r=${r#*/}; m=${r%%/*}; r=${r#*/}; '
    'i=${r%%/*}; p=${r#*/}; '
    'if [ "$k" = d ]; then rmdir -- "$p" 2>/dev/null || printf "N%s\\0" "$p"; continue; fi; '
    "now=$(find \"$p\" -prune -printf '%s/%T@/%i' 2>/dev/null); "
    'if [ "$now" != "$s/$m/$i" ]; then printf "C%s\\0" "$p"; continue; fi; '
    'rm -f -- "$p" 2>/dev/null || printf "K%s\\0" "$p"; done'
)
DELETE_VERIFIED = (
    'r=$1; cd -- "$r" || exit 4; '
    'xargs -0 sh -c "$2" sh; '
    'if [ "$3" = 1 ] && ! rmdir -- "$r" 2>/dev/null; then '
    'find . \\( -type f -o -type l \\) -exec printf "R%s\\0" {} +; fi'
)

# $@ strays to remove from a staged tree; each one's folder keeps its times (they were
# set from the source's).
PRUNE = (
    'for s; do p=$(dirname -- "$s"); r=$(mktemp) || exit 3; touch -r "$p" -- "$r"; '
    'rm -rf -- "$s" 2>/dev/null || { chmod -R u+rwx -- "$s"; rm -rf -- "$s"; }; '
    'touch -r "$r" -- "$p"; rm -f -- "$r"; done'
)

# $1 the ascmhl folder to create (must not exist), $2 the generation's name, its content
# on stdin, $3 the chain file's name, $4 its content (small: an argument).
WRITE_MHL = (
    'd=$1; mkdir -- "$d" || exit 3; cat > "$d/$2" || exit 3; '
    "printf '%s' \"$4\" > \"$d/$3\" || exit 3"
)

# $1 a path on the filesystem to flush.
SYNC = 'sync -f -- "$1" 2>/dev/null || sync'

# $1 the source root of a move: directories in it (and its parent) this account cannot
# write, one per NUL record. Deleting needs write access to every parent.
DELETABLE = (
    'r=$1; p=$(dirname -- "$r"); '
    '[ -w "$p" ] || printf "%s\\0" "$p"; '
    'if [ -d "$r" ] && [ ! -L "$r" ]; then '
    'find "$r" -type d \\( ! -writable -o ! -executable \\) -print0 2>/dev/null; fi'
)

# $1 a probe name, $2 1 to walk up from $3 too; $3.. directories: prints 1 when any of
# them (or, walking, an ancestor of $3) holds the probe, else 0. Finds one storage
# seen under two names (the probe was written on the other side).
SAME_STORAGE = (
    'n=$1; w=$2; shift 2; for d in "$@"; do [ -e "$d/$n" ] && { printf 1; exit 0; }; done; '
    'if [ "$w" = 1 ]; then d=$1; while [ -n "$d" ] && [ "$d" != / ] && [ "$d" != . ]; do '
    '[ -e "$d/$n" ] && { printf 1; exit 0; }; d=$(dirname -- "$d"); done; fi; printf 0'
)

# $1 a folder, $2 a probe name: "mk" writes the probe, printing the path of a reference
# file that keeps the folder's times; "rm" with $4 that path removes the probe and
# gives the folder its times back (the source's folder must not look touched).
PROBE_FILE = (
    'd=$1; n=$2; if [ "$3" = rm ]; then rm -f -- "$d/$n"; '
    'touch -r "$4" -- "$d" 2>/dev/null; rm -f -- "$4"; exit 0; fi; '
    'r=$(mktemp) || exit 3; touch -r "$d" -- "$r" || { rm -f -- "$r"; exit 3; }; '
    ': > "$d/$n" || { rm -f -- "$r"; exit 3; }; printf "%s" "$r"'
)

# $1 the final name of a merge: "none", "file" (not a folder, a link to one included),
# or "dir" followed by every symlink inside it (NUL records, ./rel): merge never
# writes through a link.
MERGE_TARGET = (
    'f=$1; if [ -L "$f" ] || { [ -e "$f" ] && [ ! -d "$f" ]; }; then printf file; '
    'elif [ ! -e "$f" ]; then printf none; '
    'else printf "dir\\0"; cd -- "$f" && find . -type l -print0; fi'
)


def hash_tree_argv(algorithm: str, root: str) -> tuple[str, ...]:
    """The remote argv hashing every file under ``root`` with ``algorithm``."""
    return ("sh", "-c", HASH_TREE, "sh", algorithm, root, _HASH_FILES)


def delete_verified_argv(root: str, *, remove_root: bool) -> tuple[str, ...]:
    """The remote argv deleting the records fed on stdin under ``root``."""
    return ("sh", "-c", DELETE_VERIFIED, "sh", root, _DELETE_RECORDS, "1" if remove_root else "0")


# ---------------------------------------------------------------- issue 19: long links
# Scripts of the path probe and of a big file split into byte ranges (``path``,
# ``ranges``). POSIX sh and dd only (dd's bs/skip/seek/count and conv=notrunc exist in
# GNU and BSD dd alike; no GNU-only iflag/oflag): they run on Linux and macOS hosts.

RTT_READY = b"ketter-rtt:"
RTT_DONE = b":ketter-rtt"
# Prints RTT_READY, waits for one line from us, prints RTT_DONE: the time between our
# line and RTT_DONE is one round trip.
RTT_PROBE = "printf 'ketter-rtt:'; IFS= read -r x; printf ':ketter-rtt'"

# A big file split into byte ranges (``ranges``): blocks of $2 bytes, aligned, so plain
# dd skip/seek do (no GNU iflag=skip_bytes). dd prints its count of bytes first on its
# last stderr line in GNU ("N bytes (..) copied") and BSD ("N bytes transferred") alike.

# $1 file, $2 block size, $3 first block, $4 blocks: that range of the file on stdout.
RANGE_READ = 'exec dd if="$1" bs="$2" skip="$3" count="$4"'

# $1 the staged file (created if missing, never truncated), $2 block size, $3 first
# block, $4 the range's marker (made only once every byte arrived), $5 the range's
# length: stdin written at that offset. Exit 6: fewer bytes than $5 came (a cut link).
RANGE_WRITE = (
    'f=$1; m=$4; mkdir -p -- "$(dirname -- "$f")" "$(dirname -- "$m")" || exit 3; '
    'n=$(dd of="$f" bs="$2" seek="$3" conv=notrunc 2>&1) || { printf "%s\\n" "$n" >&2; '
    'exit 3; }; n=$(printf "%s\\n" "$n" | tail -n 1); n=${n%% *}; '
    '[ "$n" = "$5" ] || { echo "range cut short: $n of $5 bytes" >&2; exit 6; }; : > "$m"'
)

# $1 a folder of range markers: their names, one per line (none if it is missing).
RANGE_MARKS = 'cd -- "$1" 2>/dev/null || exit 0; for f in *; do [ -e "$f" ] && printf "%s\\n" "$f"; done; exit 0'
