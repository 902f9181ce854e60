"""What a running process reads (environment), reports (progress, console) and gives back
(memory)."""
