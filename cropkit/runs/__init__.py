"""Running the kit: a notebook's run (`notebook`), profiles and their planned runs (`profiles`), batch
reproduction (`reproduce`), summaries and the reference (`report`), the compute plan (`budget`) and the papers'
own numbers (`published`). The top layer: nothing below imports it."""
