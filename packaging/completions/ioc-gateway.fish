# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_ioc_gateway_global_optspecs
    string join \n log-format= h/help V/version
end

function __fish_ioc_gateway_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_ioc_gateway_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_ioc_gateway_using_subcommand
    set -l cmd (__fish_ioc_gateway_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c ioc-gateway -n "__fish_ioc_gateway_needs_command" -l log-format -d 'Log format: readable text on a terminal, JSON lines for log collectors' -r -f -a "text\t''
json\t''"
complete -c ioc-gateway -n "__fish_ioc_gateway_needs_command" -s h -l help -d 'Print help'
complete -c ioc-gateway -n "__fish_ioc_gateway_needs_command" -s V -l version -d 'Print version'
complete -c ioc-gateway -n "__fish_ioc_gateway_needs_command" -f -a "run" -d 'Run the gateway'
complete -c ioc-gateway -n "__fish_ioc_gateway_needs_command" -f -a "status" -d 'Ask the running gateway (its HTTP API) what is wrong, in one screen'
complete -c ioc-gateway -n "__fish_ioc_gateway_needs_command" -f -a "probe" -d 'Listen on a serial port and show what decodes (for commissioning a sensor)'
complete -c ioc-gateway -n "__fish_ioc_gateway_needs_command" -f -a "buffer" -d 'Inspect the disk buffer: read-only, safe while a gateway runs on it (takes no lock)'
complete -c ioc-gateway -n "__fish_ioc_gateway_needs_command" -f -a "check-config" -d 'Check a config file and what `run` will need: exit 0 if usable, else print where the problem is and exit 78 (EX_CONFIG)'
complete -c ioc-gateway -n "__fish_ioc_gateway_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand run" -s c -l config -d 'Path to the TOML config file' -r -F
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand run" -l log-format -d 'Log format: readable text on a terminal, JSON lines for log collectors' -r -f -a "text\t''
json\t''"
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand run" -s h -l help -d 'Print help'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand status" -l url -d 'The gateway\'s HTTP address ([http] listen)' -r
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand status" -l token-env -d 'Name of an environment variable holding the HTTP token, if [http] has one' -r
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand status" -l log-format -d 'Log format: readable text on a terminal, JSON lines for log collectors' -r -f -a "text\t''
json\t''"
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand status" -s h -l help -d 'Print help'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand probe" -l port -d 'Serial port, e.g. /dev/ttyUSB0 (with --config: instead of the input\'s port)' -r -F
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand probe" -l baud -d 'Baud rate (default: the protocol\'s usual one, or the input\'s with --config; with auto, the usual rates are tried one after the other)' -r
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand probe" -l protocol -r -f -a "pms5003\t''
sds011\t''
node\t''
nmea0183\t'NMEA 0183 GNSS sentences'
vaisala\t'Vaisala WXT5xx ASCII / WMT700 messages (automatic mode: a polled station stays silent)'
auto\t'All of the above at once, and (without `--baud`) the usual rates one after the other'"
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand probe" -l config -d 'Read the port, baud rate and decoder settings of a serial input from this config file (needed for `protocol = "lines"`, whose pattern is in the config); with --input' -r -F
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand probe" -l input -d 'The serial input of --config to probe: its `name`, or its `port` path' -r
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand probe" -l seconds -d 'Give up if nothing decodes within this many seconds' -r
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand probe" -l log-format -d 'Log format: readable text on a terminal, JSON lines for log collectors' -r -f -a "text\t''
json\t''"
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand probe" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand buffer; and not __fish_seen_subcommand_from stats export help" -l log-format -d 'Log format: readable text on a terminal, JSON lines for log collectors' -r -f -a "text\t''
json\t''"
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand buffer; and not __fish_seen_subcommand_from stats export help" -s h -l help -d 'Print help'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand buffer; and not __fish_seen_subcommand_from stats export help" -f -a "stats" -d 'Per class: unsent and acked lines, time span of the unsent readings, damage, disk use'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand buffer; and not __fish_seen_subcommand_from stats export help" -f -a "export" -d 'Write the buffered readings as plain line protocol (urgent class first, oldest first), exactly what the gateway would send; a summary goes to stderr'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand buffer; and not __fish_seen_subcommand_from stats export help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand buffer; and __fish_seen_subcommand_from stats" -s c -l config -d 'The gateway\'s config file (its data_dir, and max_disk_mb as the disk bound)' -r -F
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand buffer; and __fish_seen_subcommand_from stats" -l data-dir -d 'The gateway\'s data_dir, or the buffer directory itself' -r -F
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand buffer; and __fish_seen_subcommand_from stats" -l log-format -d 'Log format: readable text on a terminal, JSON lines for log collectors' -r -f -a "text\t''
json\t''"
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand buffer; and __fish_seen_subcommand_from stats" -l json -d 'Print JSON instead of text'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand buffer; and __fish_seen_subcommand_from stats" -s h -l help -d 'Print help'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand buffer; and __fish_seen_subcommand_from export" -s c -l config -d 'The gateway\'s config file (its data_dir, and max_disk_mb as the disk bound)' -r -F
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand buffer; and __fish_seen_subcommand_from export" -l data-dir -d 'The gateway\'s data_dir, or the buffer directory itself' -r -F
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand buffer; and __fish_seen_subcommand_from export" -s o -l output -d 'Output file, or `-` for standard output' -r -F
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand buffer; and __fish_seen_subcommand_from export" -l class -d 'Which priority class to export' -r -f -a "urgent\t''
normal\t''
all\t''"
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand buffer; and __fish_seen_subcommand_from export" -l log-format -d 'Log format: readable text on a terminal, JSON lines for log collectors' -r -f -a "text\t''
json\t''"
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand buffer; and __fish_seen_subcommand_from export" -l include-acked -d 'Also export what the store already acknowledged but is still on disk'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand buffer; and __fish_seen_subcommand_from export" -s h -l help -d 'Print help'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand buffer; and __fish_seen_subcommand_from help" -f -a "stats" -d 'Per class: unsent and acked lines, time span of the unsent readings, damage, disk use'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand buffer; and __fish_seen_subcommand_from help" -f -a "export" -d 'Write the buffered readings as plain line protocol (urgent class first, oldest first), exactly what the gateway would send; a summary goes to stderr'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand buffer; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand check-config" -l log-format -d 'Log format: readable text on a terminal, JSON lines for log collectors' -r -f -a "text\t''
json\t''"
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand check-config" -l json -d 'One JSON object on stdout (`ok`, `file`, `errors` with line, key and message)'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand check-config" -s h -l help -d 'Print help'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand help; and not __fish_seen_subcommand_from run status probe buffer check-config help" -f -a "run" -d 'Run the gateway'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand help; and not __fish_seen_subcommand_from run status probe buffer check-config help" -f -a "status" -d 'Ask the running gateway (its HTTP API) what is wrong, in one screen'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand help; and not __fish_seen_subcommand_from run status probe buffer check-config help" -f -a "probe" -d 'Listen on a serial port and show what decodes (for commissioning a sensor)'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand help; and not __fish_seen_subcommand_from run status probe buffer check-config help" -f -a "buffer" -d 'Inspect the disk buffer: read-only, safe while a gateway runs on it (takes no lock)'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand help; and not __fish_seen_subcommand_from run status probe buffer check-config help" -f -a "check-config" -d 'Check a config file and what `run` will need: exit 0 if usable, else print where the problem is and exit 78 (EX_CONFIG)'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand help; and not __fish_seen_subcommand_from run status probe buffer check-config help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand help; and __fish_seen_subcommand_from buffer" -f -a "stats" -d 'Per class: unsent and acked lines, time span of the unsent readings, damage, disk use'
complete -c ioc-gateway -n "__fish_ioc_gateway_using_subcommand help; and __fish_seen_subcommand_from buffer" -f -a "export" -d 'Write the buffered readings as plain line protocol (urgent class first, oldest first), exactly what the gateway would send; a summary goes to stderr'
