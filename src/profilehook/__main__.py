from profilehook.cli import main

main()
