"""Distillation of an extractive-QA model (start/end logits): the loss by hand, and an HWA
fine-tune of a tiny BERT QA model from a digital teacher through `finetune`."""
import copy

import pytest
import torch
from transformers import BertConfig, BertForQuestionAnswering
from transformers.modeling_outputs import QuestionAnsweringModelOutput, SequenceClassifierOutput

import analogformer as af
from analogformer.training.distill import output_distillation_loss
from analogformer.training.finetune import FinetuneConfig, finetune, unlabelled


def _kl_rows(s, t, T):
    ps, pt = torch.softmax(s / T, -1), torch.softmax(t / T, -1)
    return (pt * (pt.log() - ps.log())).sum(-1).mean() * T * T


def test_qa_loss_is_the_mean_of_start_and_end_kl_by_hand():
    g = torch.Generator().manual_seed(0)
    s = QuestionAnsweringModelOutput(start_logits=torch.randn(3, 7, generator=g), end_logits=torch.randn(3, 7, generator=g))
    t = QuestionAnsweringModelOutput(start_logits=torch.randn(3, 7, generator=g), end_logits=torch.randn(3, 7, generator=g))
    want = 0.5 * (_kl_rows(s.start_logits, t.start_logits, 2.0) + _kl_rows(s.end_logits, t.end_logits, 2.0))
    assert torch.allclose(output_distillation_loss(s, t, 2.0), want, atol=1e-6)
    assert output_distillation_loss(t, t, 1.0).abs() < 1e-6


def test_classifier_output_goes_through_logits_and_other_outputs_are_refused():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    got = output_distillation_loss(SequenceClassifierOutput(logits=s), SequenceClassifierOutput(logits=t), 1.0)
    assert torch.allclose(got, _kl_rows(s, t, 1.0), atol=1e-6)
    with pytest.raises(ValueError, match="a model output with `logits` or `start_logits`/`end_logits`; "
                                         "dict has neither"):
        output_distillation_loss({}, {}, 1.0)


def test_unlabelled_drops_qa_answer_positions():
    batch = {"input_ids": 1, "attention_mask": 2, "labels": 3, "start_positions": 4, "end_positions": 5}
    assert unlabelled(batch) == {"input_ids": 1, "attention_mask": 2}


def test_hwa_distillation_of_a_tiny_qa_model_learns_the_teacher():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    teacher = BertForQuestionAnswering(cfg).eval()
    student = af.analogize(copy.deepcopy(teacher), af.AnalogConfig.ideal())
    with torch.no_grad():  # start the student away from the teacher
        for p in student.qa_outputs.parameters():
            p.add_(0.5 * torch.randn_like(p))
    g = torch.Generator().manual_seed(2)
    batches = [{"input_ids": torch.randint(0, 50, (4, 12), generator=g), "attention_mask": torch.ones(4, 12, dtype=torch.long),
                "start_positions": torch.randint(0, 12, (4,), generator=g),
                "end_positions": torch.randint(0, 12, (4,), generator=g)} for _ in range(4)]

    def gap(m):
        with torch.no_grad():
            return float(sum(output_distillation_loss(m(**unlabelled(b)), teacher(**unlabelled(b)), 1.0) for b in batches))

    before = gap(student.eval())
    finetune(student, batches, FinetuneConfig(learning_rate=1e-2, epochs=5, batch_size=4, warmup_ratio=0.0,
                                              distill_weight=1.0), teacher=teacher)
    assert gap(student.eval()) < 0.5 * before
