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


def main(argv=None) -> int:
    parser = build_parser("python -m weights_tools", "Convert MobileNet checkpoints to and from mobilenet-np "
                          "HDF5 weights.", "weights_tools", COMMANDS)
    return run_command(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
