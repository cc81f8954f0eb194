from cityvitals.cli import main

main()
