from hatch_mlenv.cli import main

main(prog_name="mlenv")
