"""The main job, end to end (grows with the toolkit): until the runtime lands, the model summary."""
import sys

from glimmer.models.info import main

if __name__ == "__main__":
    sys.exit(main(["--arch", "glimmernet"]))
