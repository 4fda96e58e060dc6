"""``python -m diffuseg ...`` (and ``torchrun ... -m diffuseg ...``): the ``diffuseg`` command."""

from diffuseg.cli import main

if __name__ == "__main__":
    main()
