from minivlm.cli import main

main()
