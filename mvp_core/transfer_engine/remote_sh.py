"""Every shell script Ketter runs on a remote host: one place to read, and audit, what
a remote host must be able to do.

Every script is fixed text run as ``sh -c SCRIPT sh ARGS...``: paths and names only
ever arrive as positional arguments or NUL-separated records on stdin, never spliced
into the text, and ``ssh.run_remote`` quotes the whole command once.

The portability contract. A remote host is Linux with GNU tools, or a stock Mac
(macOS 10.15 and later: BSD ``find``/``stat``/``mv``, ``shasum``, ``md5``, Info-ZIP
``unzip``, a login shell that parses commands like POSIX ``sh``, a PATH of
``/usr/bin:/bin:/usr/sbin:/sbin``). So every script here uses only:

- POSIX ``sh`` (no bash-isms, ``local``, arrays or ``$'...'``); it must also parse under
  zsh as the login shell, which is why everything runs inside ``sh -c``;
- ``find PATH`` with POSIX primaries (``-type``, ``-name``, ``-path``, ``-newer``,
  ``-prune``, ``-exec ... {} +``) and ``-maxdepth``/``-print0`` (both BSD and GNU). GNU's
  ``-printf`` only where ``LISTER`` found it; otherwise BSD ``stat -f``;
- ``stat -f`` (BSD) or ``stat -c`` (GNU), chosen at run time, never assumed;
- ``mv -n`` (``-T`` only where ``mv --version`` says GNU), ``rm``, ``rmdir``, ``mkdir -p``,
  ``chmod``, ``touch -r``, ``mktemp`` (no template), ``dirname``, ``tr``, ``xargs -0``,
  ``df -P -k``, ``sync``, ``cat``, ``printf``, ``command -v``;
- never ``timeout``, ``python3``, ``perl``, ``bash``, ``env``, ``readlink -f``, ``sed -i``,
  ``date -d``, ``stat -c`` unguarded, ``find -printf`` unguarded, ``mv -T`` unguarded,
  or a locale other than ``C.UTF-8`` (unzip; a Mac without it falls back to C).

What each step needs, beyond that:

- ``PROBE_HOST`` (``capabilities``): ``uname``, ``command -v``, ``RSYNC --version``,
  ``unzip -v``; learns the rsync flavour, find/stat dialect, unzip, hash tools, dd.
- ``RANGE_READ`` / ``RANGE_WRITE`` / ``RANGE_MARKS`` (``ranges``, long links only):
  ``dd bs= skip= seek= count= conv=notrunc`` (POSIX), ``dirname``, ``tail``. A host
  without ``dd`` gets its big files whole, one rsync stream each.
- ``MODES_AND_TIMES`` (``ranges``: a push whose every file went as ranges): ``mkdir -p``,
  ``chmod`` with an octal mode and ``touch -m -d YYYY-MM-DDThh:mm:SS.fZ`` (POSIX 2008;
  GNU and macOS).
- ``LISTER`` / ``LIST_TREE`` (verification listings, ``DELETE_VERIFIED``'s re-check,
  ``LIST_THEN_RENAME``, ``UNFINISHED_FILES``): GNU ``find -printf``, else ``find -exec
  stat -f`` (BSD) with ``tr``; names with a newline are stat'ed one by one.
- ``HASH_TREE``: the chosen tool (``xxhsum`` for xxh128, ``sha256sum`` or
  ``shasum -a 256``, ``md5sum`` or ``md5 -r``), each fed one file on stdin so that no
  tool ever prints a name (names with newlines cannot break the parse).
- ``DELETE_VERIFIED``: ``kstamp`` to re-check each file just before its ``rm -f``;
  directories go with ``rmdir`` (only when empty), never ``rm -rf``.
- ``PRUNE``: ``dirname``, ``mktemp``, ``touch -r``, ``rm -rf`` inside the job's own
  staging dir only.
- ``WRITE_MHL``: ``mkdir``, ``cat``, ``printf``.
- ``SYNC``: ``sync -f PATH`` (GNU coreutils >= 8.24), else a plain ``sync`` (a Mac).
- ``DELETABLE``: ``test -w``/``-x`` on every folder (``find -writable`` is GNU-only).
- ``SAME_STORAGE``, ``PROBE_FILE``: ``test -e``, ``dirname``, ``mktemp``, ``touch -r``;
  a probe file written on one side and looked for on the other.
- ``MERGE_TARGET``: ``test``, ``find -type l -print0``.
- ``NEAREST_LISTING`` (``names``): globbing only; the names a typed path may have
  meant under another Unicode normalisation.
- ``LIST_PREFIXED``: globbing only (the orphan sweep's staging roots).
- ``RENAME_NOREPLACE``, ``MARK_RENAME``, ``LIST_THEN_RENAME``, ``PREPARE_AND_LOOK``,
  ``CHUNK_STATE``, ``GUARD``, ``RMTREE``, ``EXISTS``, ``MKDIR`` (``delivery``),
  ``PREPARE_DIRS`` (``steps``), ``LOOK_AT_TARGET`` (``cli``), ``REMOVE_TEMP_ZIPS``
  (``zip_first``): ``test``, ``mkdir -p``, ``mv -n``, ``rm``, ``chmod -R``.
- ``UNZIP_CHUNK``: Info-ZIP ``unzip`` (6.00, with ``-^`` and ``-K``), ``kill``, ``wait``.
- ``STOP_WITH_US`` (``ssh``): ``cat``, ``kill``, ``wait``.
- ``DKU_PORTAL_PROBE``, ``COUNT_FILES`` (``dku``): ``command -v``, ``df -Pk``, ``wc``.

The same contract for users: docs/mac_hosts.md. tests/engine/test_maclike.py runs
every step against a Mac-like host (../shared/maclike).
"""

from __future__ import annotations

# $1 the remote rsync (a portal's rsync_path, else "rsync"): what this host can do, as
# "key=value" lines, then "rsync:" and the first lines of that rsync's --version. Only
# POSIX sh and command -v; every tool it asks about may be missing (that is the answer).
PROBE_HOST = (
    'r=$1; echo "os=$(uname -s 2>/dev/null)"; '
    "if find . -maxdepth 0 -printf '' >/dev/null 2>&1; then echo find=gnu; else echo find=bsd; fi; "
    'if stat -c %s . >/dev/null 2>&1; then echo stat=gnu; '
    'elif stat -f %z . >/dev/null 2>&1; then echo stat=bsd; else echo stat=none; fi; '
    'if command -v unzip >/dev/null 2>&1; then echo unzip=1; '
    'case $(unzip -v 2>/dev/null) in *ZIP64_SUPPORT*) echo zip64=1 ;; esac; fi; '
    'command -v dd >/dev/null 2>&1 && echo dd=1; '
    'for t in xxhsum sha256sum shasum md5sum md5; do '
    'command -v "$t" >/dev/null 2>&1 && echo "hash=$t"; done; '
    'if command -v "$r" >/dev/null 2>&1; then echo rsync:; "$r" --version 2>&1 | '
    '{ IFS= read -r a; IFS= read -r b; printf "%s\\n%s\\n" "$a" "$b"; }; '
    'else echo rsync=missing; fi; exit 0'
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
# The same record from BSD stat: the mode string's first letter is the kind ("-" file,
# "d", "l"), whole seconds as "S.0", the path as "./rel" ("." the root).
_STAT_FORMAT = "%Sp/%z/%m.0/%i/%N"

# Shell functions both dialects share, prefixed to the scripts that list or re-check:
#   kls ROOT     the listing of ROOT (``FIND_FORMAT`` records; exit 1 and "No such file
#                or directory" on stderr when ROOT is missing);
#   kstamp PATH  "size/mtime/inode" of PATH, as kls wrote it.
# GNU find's -printf where it exists; else BSD stat: names without a newline in
# batches (one line each, turned into NUL records), the others one stat each.
LISTER = (
    "if find . -maxdepth 0 -printf '' >/dev/null 2>&1; then "
    "kls() { find \"$1\" -printf '" + FIND_FORMAT + "'; }; "
    "kstamp() { find \"$1\" -prune -printf '%s/%T@/%i'; }; "
    "else "
    "kls() { if [ -d \"$1\" ] && [ ! -L \"$1\" ]; then ( cd -- \"$1\" || exit 4; "
    "nl=$(printf '\\nx'); nl=${nl%x}; "
    "find . ! -path \"*$nl*\" -exec stat -f '" + _STAT_FORMAT + "' {} + | tr '\\n' '\\000'; "
    "find . -path \"*$nl*\" -exec sh -c "
    "'for f; do stat -n -f \"$0\" -- \"$f\"; printf \"\\000\"; done' "
    "'" + _STAT_FORMAT + "' {} + ); "
    "elif [ -e \"$1\" ] || [ -L \"$1\" ]; then stat -n -f '%Sp/%z/%m.0/%i/' -- \"$1\"; "
    "printf '\\000'; "
    "else echo \"find: $1: No such file or directory\" >&2; return 1; fi; }; "
    "kstamp() { stat -n -f '%z/%m.0/%i' -- \"$1\"; }; "
    "fi; "
)

# $1 a tree: its listing (``kls``).
LIST_TREE = LISTER + 'kls "$1"'

# $1 a folder, $2 a name prefix: the names in it starting with the prefix, NUL-separated.
LIST_PREFIXED = (
    '[ -d "$1" ] || exit 0; cd -- "$1" || exit 4; for f in "$2"*; do '
    '[ -e "$f" ] || [ -L "$f" ] || continue; printf "%s\\000" "$f"; done'
)

# $1 an absolute path: "=" if it exists; else its deepest existing folder, then the names
# in that folder (NUL records), for ``names.resolve_remote`` to match under NFC.
NEAREST_LISTING = (
    'p=$1; if [ -e "$p" ] || [ -L "$p" ]; then printf "=\\000"; exit 0; fi; d=$p; '
    'while :; do d=${d%/*}; [ -n "$d" ] || d=/; [ -d "$d" ] && break; [ "$d" = / ] && break; '
    'done; printf "%s\\000" "$d"; cd -- "$d" || exit 0; for f in * .[!.]* ..?*; do '
    '[ -e "$f" ] || [ -L "$f" ] || continue; printf "%s\\000" "$f"; done'
)

# Rename $1 to $2 only if $2 does not exist: GNU ``mv -n -T``; a Mac's mv has -n but not
# -T (after the test, a folder appearing at $2 in between is the one race left there).
MV_NOREPLACE = (
    'if mv --version >/dev/null 2>&1; then mv -n -T -- "$1" "$2"; '
    'else mv -n -- "$1" "$2"; fi'
)

# $1 a folder, $2 a reference file: the "./rel" of each file under $1 newer than the
# reference (an interrupted unzip's files), NUL-separated, an "END" record, then the
# folder's listing (``kls``).
UNFINISHED_FILES = (
    LISTER + 'cd -- "$1" || exit 4; '
    'find . -type f -newer "$2" -exec sh -c \'for f; do printf "%s\\000" "$f"; done\' sh {} + '
    '&& printf "END\\000" && kls .'
)

# $1 root, $2 _DELETE_RECORDS, $3 1 to remove the root too (a folder job). stdin: NUL-separated records "f/<size>/<mtime>/<inode>/./<rel>" (files, to
# delete only if still exactly so) and "d/0/0/0/./<rel>" (directories, deepest first,
# removed only when empty). Prints "C<rel>\0" for a file that changed (kept), "K<rel>\0"
# for one that could not be removed, "N<rel>\0" for a directory not empty (kept). The
# root itself is removed last, if empty; if not, "R<rel>\0" for every file still in it.
_DELETE_RECORDS = LISTER + (
    'for r; do k=${r%%/*}; r=${r#*/}; s=${r%%/*}; r=${r#*/}; m=${r%%/*}; r=${r#*/}; '
    'i=${r%%/*}; p=${r#*/}; '
    'if [ "$k" = d ]; then rmdir -- "$p" 2>/dev/null || printf "N%s\\0" "$p"; continue; fi; '
    'now=$(kstamp "$p" 2>/dev/null); '
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
    'find "$r" -type d -exec sh -c \'for d; do [ -w "$d" ] && [ -x "$d" ] '
    '|| printf "%s\\000" "$d"; done\' sh {} + 2>/dev/null; fi'
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


# ---------------------------------------------------------------- delivery, targets, temp files

# delivery.py's scripts: paths as "$@". Exit 17 = the destination exists.
# $@ paths: one 0/1 each, whether it exists (a dangling link counts).
EXISTS = 'for p in "$@"; do if [ -e "$p" ] || [ -L "$p" ]; then printf 1; else printf 0; fi; done'
# $1 a staging tree to remove (read-only folders included).
RMTREE = ('if [ -e "$1" ] || [ -L "$1" ]; then rm -rf -- "$1" 2>/dev/null '
          '|| { chmod -R u+rwx -- "$1"; rm -rf -- "$1"; }; echo removed; fi')
# $1 -> $2, never over an existing $2 (``MV_NOREPLACE``).
RENAME_NOREPLACE = (
    'if [ -e "$2" ] || [ -L "$2" ]; then exit 17; fi; ' + MV_NOREPLACE + '; rc=$?; '
    'if [ -e "$1" ] || [ -L "$1" ]; then '
    'if [ -e "$2" ] || [ -L "$2" ]; then exit 17; fi; exit $(( rc ? rc : 3 )); fi')
# $1 a folder to create and prove writable.
MKDIR = 'mkdir -p -- "$1" && : > "$1"/.ketter-probe && rm -f -- "$1"/.ketter-probe'
# $1 the marker, then RENAME_NOREPLACE of $2 -> $3.
MARK_RENAME = ': > "$1" || exit 3; shift; ' + RENAME_NOREPLACE
# $1 a file to create (empty).
TOUCH = ': > "$1"'
# Verify and deliver in one ssh session: list $1 (NUL records, then an empty record as
# the end mark), wait for our verdict on stdin, and only on "go" run MARK_RENAME of
# $2 (marker), $3 -> $4. EOF (we died, or aborted) or anything else: exit 5, nothing done.
LIST_THEN_RENAME = (
    LISTER + 'kls "$1" || exit 4; printf \'\\000\\000\'; '
    'IFS= read -r nod || exit 5; [ "$nod" = go ] || exit 5; shift; ' + MARK_RENAME)

# $1 make the root even if the final name exists (replace); $2 how many dirs follow to
# create and check (the target first); then final, staged, marker, old tree (one 0/1
# each) and the staging root, made (a trailing 1) when the final name is free or $1=1.
PREPARE_AND_LOOK = (
    'mk=$1; nd=$2; shift 2; i=0; '
    'while [ "$i" -lt "$nd" ]; do d=$1; shift; i=$((i + 1)); '
    'mkdir -p -- "$d" || exit 3; '
    'test -d "$d" || { echo "not a directory: $d" >&2; exit 3; }; '
    'test -w "$d" || { echo "not writable: $d" >&2; exit 3; }; done; '
    'for p in "$1" "$2" "$3" "$4"; do '
    'if [ -e "$p" ] || [ -L "$p" ]; then printf 1; else printf 0; fi; done; '
    'if [ "$mk" = 1 ] || ! { [ -e "$1" ] || [ -L "$1" ]; }; then '
    'mkdir -p -- "$5" && : > "$5"/.ketter-probe && rm -f -- "$5"/.ketter-probe || exit 4; '
    'printf 1; else printf 0; fi'
)

# Chunk markers: list those of plan "$2" in "$1" (created if missing); none → start
# over: remove every marker and the staged tree "$3" (when given; never in merge).
CHUNK_STATE = (
    'm=$1; d=$2; s=$3; mkdir -p -- "$m" || exit 3; found=0; '
    'for f in "$m"/"$d"-*; do if [ -e "$f" ]; then found=1; printf "%s\\n" "${f##*/}"; fi; '
    'done; if [ "$found" = 0 ]; then rm -f -- "$m"/*; '
    'if [ -n "$s" ] && { [ -e "$s" ] || [ -L "$s" ]; }; then rm -rf -- "$s" 2>/dev/null '
    '|| { chmod -R u+rwx -- "$s"; rm -rf -- "$s"; }; fi; fi'
)

# The guard in front of a fresh job's remote rsync (see the module doc): final name,
# delivered mark and old tree absent, staging root made, then rsync itself.
GUARD_REFUSED = "ketter-guard: target not fresh, look first"
GUARD = (
    'f=$1; m=$2; o=$3; r=$4; shift 4; '
    'for p in "$f" "$m" "$o"; do if [ -e "$p" ] || [ -L "$p" ]; then '
    f'echo "{GUARD_REFUSED}" >&2; exit 97; fi; done; '
    f'mkdir -p -- "$r" 2>/dev/null || {{ echo "{GUARD_REFUSED}" >&2; exit 97; }}; '
    'exec "$@"'
)

# steps.py: $@ folders to create and prove writable (the target, the remote temp dir).
PREPARE_DIRS = (
    'for d in "$@"; do '
    'mkdir -p -- "$d" || exit 3; '
    'test -d "$d" || { echo "not a directory: $d" >&2; exit 3; }; '
    'test -w "$d" || { echo "not writable: $d" >&2; exit 3; }; '
    'done'
)

# Run on an ssh target by --dry-run: the nearest existing directory (a real run creates
# the rest), whether it is writable, whether the output name is taken.
LOOK_AT_TARGET = ('d=$1; while [ ! -d "$d" ]; do d=$(dirname "$d"); done; echo "base=$d"; '
                  '[ -w "$d" ] && echo writable; { [ -e "$2" ] || [ -L "$2" ]; } && echo exists; '
                  'exit 0')

# The one-chunk zip, every chunk zip, and rsync's temp files of any of them; and,
# after success, the chunk markers "$3".
REMOVE_TEMP_ZIPS = ('rm -f -- "$1"/"$2".zip "$1"/."$2".zip.* "$1"/"$2"+*.zip "$1"/."$2"+*.zip.*'
                    ' && if [ -n "$3" ]; then rm -rf -- "$3"; fi')

# One chunk of a pipelined ZIP_FIRST: unzip, and only if it succeeded (exit 0 or 1)
# write the chunk's marker and remove its zip, in the same ssh session (one round
# trip per chunk). Like ssh's stop-with-us wrapper, a watcher on our never-written
# stdin kills unzip when our ssh goes away; the marker is then not written.
MARKER_FAILED = 97
UNZIP_CHUNK = (
    'LC_ALL=C.UTF-8; export LC_ALL; z=$1; m=$2; shift 2; exec 3<&0; "$@" 3<&- & pid=$!; '
    '{ cat <&3 >/dev/null; kill -TERM "$pid"; } >/dev/null 2>&1 & watcher=$!; '
    'exec 3<&-; wait "$pid"; rc=$?; kill "$watcher" 2>/dev/null; '
    f'if [ "$rc" -le 1 ]; then {{ : > "$m" && rm -f -- "$z"; }} || exit {MARKER_FAILED}; fi; '
    'exit "$rc"'
)

# Runs "$@" in the background and a watcher on our (never written) stdin: EOF there
# means our ssh is gone, so the command is killed. sh gives background jobs
# /dev/null as stdin, hence the copy on fd 3. The watcher's output goes to /dev/null
# so it cannot hold the session open; it is killed when the command ends.
STOP_WITH_US = (
    'exec 3<&0; "$@" 3<&- & pid=$!; '
    '{ cat <&3 >/dev/null; kill -TERM "$pid"; } >/dev/null 2>&1 & watcher=$!; '
    'exec 3<&-; wait "$pid"; rc=$?; kill "$watcher" 2>/dev/null; exit "$rc"'
)


# ---------------------------------------------------------------- the DKU

DKU_TOOLS = ("rsync", "unzip")
# The DKU's look at an ssh portal (``dku.portals``), under ``sh -c`` on its host: $1 is the base path, $2 the remote temp dir
# (free space is read on its nearest existing parent: the engine creates it), $3 the
# portal's rsync (its rsync_path, else "rsync"). Arguments are
# never parsed by the shell; builtins and df only, so a minimal remote PATH cannot break
# the probe itself. Output: "tool NAME PATH|MISSING", then "df-WHICH-ok|error LINE".
DKU_PORTAL_PROBE = r"""
for t in TOOLS; do
  c=$t; [ "$t" = rsync ] && c=$3
  if p=$(command -v "$c"); then echo "tool $t $p"; else echo "tool $t MISSING"; fi
done
d=$2
while [ -n "$d" ] && [ ! -d "$d" ]; do
  case $d in */*) d=${d%/*} ;; *) d= ;; esac
done
[ -n "$d" ] || d=/
for which in base temp; do
  if [ "$which" = base ]; then target=$1; else target=$d; fi
  if out=$(df -Pk -- "$target" 2>&1); then st=ok; else st=error; fi
  printf '%s\n' "$out" | while IFS= read -r line; do echo "df-$which-$st $line"; done
done
""".replace("TOOLS", " ".join(DKU_TOOLS))

# $1 a folder: how many files are under it (the DKU's smoke run; its own plain names).
COUNT_FILES = 'find "$1" -type f | wc -l'


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

# $@ groups of four: kind (d: a folder, made if missing; f: a file), path, mode (octal),
# mtime for POSIX ``touch -d`` (UTC, with the nanoseconds): what the final rsync pass
# would give a tree whose every file came as byte ranges. Folders come after what they
# hold, deepest first: touching a file leaves its folder's mtime alone, making one does not.
MODES_AND_TIMES = (
    'while [ "$#" -ge 4 ]; do '
    'if [ "$1" = d ]; then mkdir -p -- "$2" || exit 1; fi; '
    'chmod "$3" -- "$2" && touch -m -d "$4" -- "$2" || exit 1; shift 4; done'
)
