# Sourced by benches/instructions.sh and benches/com_way_instructions.sh.
#
#   ir OUT_FILE COMMAND [ARGS...]
#
# Runs COMMAND under `valgrind --tool=callgrind` (output in OUT_FILE, valgrind's own messages in
# OUT_FILE.log) and prints the total instructions of the run. Fails, with the log, if valgrind
# or the command fails or no total was written, so that a broken run cannot pass as a figure.
ir() {
    local file=$1 total
    shift
    if ! valgrind --tool=callgrind --callgrind-out-file="$file" "$@" >/dev/null 2>"$file.log"; then
        echo "callgrind run failed: $*" >&2
        cat "$file.log" >&2
        return 1
    fi
    total=$(awk '/^(summary|totals):/ { print $2; exit }' "$file")
    if ! [[ "$total" =~ ^[0-9]+$ ]]; then
        echo "no instruction total in $file ($*)" >&2
        return 1
    fi
    echo "$total"
}
