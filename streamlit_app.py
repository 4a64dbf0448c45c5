"""The entry and the one frame: page config, navigation over pages/, sidebar, hosted workspace and
privacy note are drawn once (lib.ui.frame); each page file only renders. Imports no TensorFlow."""

from lib.ui import frame

frame.run()
