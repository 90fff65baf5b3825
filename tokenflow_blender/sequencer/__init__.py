"""Sequencer: strips, rendering, mattes, colour, image info, placement, convert; no edit/, takes/, farm/."""
