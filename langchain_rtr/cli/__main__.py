from langchain_rtr.cli.main import main

main()
