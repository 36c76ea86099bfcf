"""``python -m vramplan`` runs the command-line interface."""

try:
    from .cli.main import main
except KeyboardInterrupt:          # Ctrl-C while Python imports, before cli.main installs its handler
    import sys

    sys.stderr.write("vramplan: aborted\n")
    sys.exit(130)

main()
