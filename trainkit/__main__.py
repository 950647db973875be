from trainkit.cli import console

console()
