"""cropkit: downstream adversarial robustness without adversarially fine-tuning the foundation model.

The library behind the numbered notebooks (the README's "What is where" table has a line per module): data
(`cropkit.data`), the frozen foundation models and the end-to-end pipeline (`cropkit.models`), the embedded
pre-training (`cropkit.pretrain`), CRoPD's pre-processors (`cropkit.train`, `cropkit.losses`), downstream heads
(`cropkit.heads`, `cropkit.protocols`), robust fine-tuning (`cropkit.finetune`), the ACL family (`cropkit.acl`),
attacks, evaluation and the gradient-masking audit (`cropkit.attacks`, `cropkit.evaluate`, `cropkit.audit`),
training cost (`cropkit.cost`), the shared training loop (`cropkit.loop`), results files (`cropkit.results`),
batch reproduction (`cropkit.reproduce`), the one way bad input is refused (`cropkit.validate`), what a profile
will cost before it runs (`cropkit.budget`) and trained pre-processors that travel with their model card
(`cropkit.pretrained`).
"""

__version__ = "0.1.0"
