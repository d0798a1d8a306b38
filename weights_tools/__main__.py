"""`python -m weights_tools COMMAND ...`: one module per command in this folder.

Each command module defines `register(subparsers)`, which adds its parser and sets `func=run`
where `run(args) -> int` is the exit status (see mobilenet_np.commandline for the conventions).
"""

import sys

from mobilenet_np.commandline import build_parser, run_command

# Command modules (the command name is set by each module's register()).
COMMANDS = [
    "convert",        # convert: transformers checkpoint (folder or Hub id) -> HDF5
    "export",         # export: HDF5 -> transformers checkpoint folder
    "import_keras",   # import-keras: Keras applications .h5 -> HDF5
    "import_tflite",  # import-tflite: TFLite flatbuffer -> HDF5
    "golden_torch",   # golden-torch: record every activation of the transformers model
]


# Third-party modules the commands need -> how to install them (the `weights` extra needs no torch).
INSTALL = {name: 'pip install "mobilenet-np[weights]"'
           for name in ("safetensors", "huggingface_hub", "tqdm", "tflite", "flatbuffers")}
INSTALL.update(torch='pip install "mobilenet-np[convert]"', transformers="pip install transformers")


def main(argv=None) -> int:
    """Run one command; a missing optional package is one line saying what to install (exit status 2)."""
    try:
        parser = build_parser("python -m weights_tools", "Convert MobileNet checkpoints to and from mobilenet-np "
                              "HDF5 weights.", "weights_tools", COMMANDS)
        return run_command(parser, argv)
    except ModuleNotFoundError as e:   # at import (the command modules) or when a command runs
        missing = (e.name or "").split(".")[0]
        if missing not in INSTALL or "--debug" in (sys.argv[1:] if argv is None else argv):
            raise
        print(f"python -m weights_tools: error: the Python package {missing} is not installed; "
              f"install it with: {INSTALL[missing]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
