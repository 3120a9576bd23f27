"""The command line, in pipes and real terminals."""
