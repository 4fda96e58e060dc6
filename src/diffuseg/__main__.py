from diffuseg.cli import main

main()
