// The Python module pickdraw _C. Loading it registers the torch.ops.pickdraw operators (they live
// in the core library); the bindings below add what is not a tensor op, plus thin typed entries
// for the ops with docstrings. Tensors cross as at::Tensor through torch's own casters: no copies.
#include <pybind11/pybind11.h>
#include <pybind11/functional.h>
#include <pybind11/stl.h>
#include <torch/extension.h>

#include <functional>
#include <stdexcept>

#include "pickdraw/attention_recorder.h"
#include "pickdraw/gaussian_smoothing.h"
#include "pickdraw/guidance_engine.h"
#include "pickdraw/guidance_files.h"
#include "pickdraw/guidance_store.h"
#include "pickdraw/layout_loss.h"
#include "pickdraw/model_layers.h"
#include "pickdraw/saliency_mask.h"
#include "pickdraw/sigma_lookup.h"
#include "pickdraw/token_attention_maps.h"
#include "pickdraw/uremd.h"

namespace py = pybind11;
using namespace pickdraw;

namespace {

// Every binding converts C++ errors into Python ones itself and hands pybind11 a ready Python
// error (error_already_set), instead of leaving it to the chain of registered exception
// translators: that chain is shared with torch's own module when both were built alike, and its
// outcome then depends on the build of torch. ValueError for bad values, IndexError for bad
// indices, RuntimeError for the rest.
[[noreturn]] void raise_as_python_error() {
  try {
    throw;
  } catch (const py::error_already_set&) {
    throw;
  } catch (const c10::IndexError& e) {
    PyErr_SetString(PyExc_IndexError, e.what_without_backtrace());
  } catch (const c10::ValueError& e) {
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
  } catch (const std::invalid_argument& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  throw py::error_already_set();
}

template <typename R, typename... A>
std::function<R(A...)> guarded(R (*f)(A...)) {
  return [f](A... args) -> R {
    try {
      return f(std::forward<A>(args)...);
    } catch (...) {
      raise_as_python_error();
    }
  };
}

template <typename R, typename C, typename... A>
std::function<R(const C&, A...)> guarded(R (C::*f)(A...) const) {
  return [f](const C& self, A... args) -> R {
    try {
      return (self.*f)(std::forward<A>(args)...);
    } catch (...) {
      raise_as_python_error();
    }
  };
}

template <typename R, typename C, typename... A>
std::function<R(C&, A...)> guarded(R (C::*f)(A...)) {
  return [f](C& self, A... args) -> R {
    try {
      return (self.*f)(std::forward<A>(args)...);
    } catch (...) {
      raise_as_python_error();
    }
  };
}

py::dict build_info() {
  py::dict info;
  info["pickdraw_version"] = PICKDRAW_VERSION;
  info["torch_version"] = PICKDRAW_TORCH_VERSION;
#ifdef PICKDRAW_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  info["guidance_format_version"] = kGuidanceFormatVersion;
  return info;
}

py::dict entries_dict(const GuidanceStore& store) {
  py::dict out;
  for (const auto& [key, tensor] : store.entries()) {
    out[py::make_tuple(key.first, key.second)] = tensor;
  }
  return out;
}

Palette palette_from_python_bytes(const py::bytes& data) {
  const std::string_view view = data;
  return palette_from_bytes(reinterpret_cast<const uint8_t*>(view.data()), view.size());
}

LayoutTemplate layout_template_from_python_bytes(const py::bytes& data) {
  const std::string_view view = data;
  return layout_template_from_bytes(reinterpret_cast<const uint8_t*>(view.data()), view.size());
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Pick-and-Draw native guidance library (ops also in torch.ops.pickdraw).";

  m.def("build_info", &build_info,
        "What this module was built against: pickdraw_version, torch_version, cuda (bool), "
        "guidance_format_version.");

  m.def("uremd_with_argmin", guarded(&uremd_with_argmin), py::arg("generated"), py::arg("palette"),
        py::arg("weight") = py::none(),
        "Forward only: (loss [B], min_cost [B, N] float32/float64, argmin [B, N] int64).");

  m.def("saliency_mask", guarded(&saliency_mask), py::arg("token_map"), py::arg("tau"),
        py::arg("min_mask_pixels") = 4, py::arg("out_size") = py::none(),
        R"doc(Binary subject mask from a [B, H, W] token map (no gradient).

Resampled to out_size = (height, width) (antialiased bilinear), min-max normalised per sample,
thresholded (> tau); when fewer than min_mask_pixels pass, the min_mask_pixels largest values instead.
Returns [B, height, width] 0/1 in the map's dtype.)doc");
  m.def("average_token_maps",
        guarded(+[](const std::vector<at::Tensor>& maps, std::array<int64_t, 2> size) {
          return average_token_maps(maps, size);
        }),
        py::arg("maps"), py::arg("size"),
        "Mean of [B, h_i, w_i] maps after resampling each to size = (height, width): [B, height, width].");
  m.def("resample_maps", guarded(&resample_maps), py::arg("maps"), py::arg("size"),
        "[B, H, W] -> [B, height, width], antialiased bilinear, align_corners=False.");

  m.def("token_attention_maps", guarded(&token_attention_maps), py::arg("q"), py::arg("k"),
        py::arg("heads"), py::arg("token_index"), py::arg("recompute_in_backward") = false,
        R"doc(Head-averaged attention of q [B, N, heads*dim] on the chosen context tokens of k [B, T, heads*dim].

Softmax over all T tokens (float32 for reduced-precision inputs), columns token_index (int64 [K]) kept:
returns [B, N, K]. recompute_in_backward: the backward recomputes the probabilities from q and k
instead of keeping them (less memory, more kernels).)doc");
  m.def("gaussian_kernel_1d", guarded(&gaussian_kernel_1d), py::arg("kernel_size"),
        py::arg("std_dev"),
        "Normalised 1-D Gaussian taps, float64 [kernel_size] (odd kernel_size, std_dev > 0).");
  m.def("gaussian_smooth", guarded(&gaussian_smooth), py::arg("maps"), py::arg("kernel_size"),
        py::arg("std_dev"),
        "Separable Gaussian blur of [..., H, W] maps with reflect padding; differentiable.");
  m.def("layout_loss",
        guarded(+[](const std::vector<at::Tensor>& maps, const std::vector<at::Tensor>& templates,
                    int64_t kernel_size, double std_dev, bool templates_smoothed) {
          return layout_loss(maps, templates, kernel_size, std_dev, templates_smoothed);
        }),
        py::arg("maps"), py::arg("templates"), py::arg("kernel_size") = 3, py::arg("std_dev") = 0.5,
        py::arg("templates_smoothed") = false,
        R"doc(Layout loss [B]: mean over layers of ||S(A_l) - S(T_l)||_F.

maps: list of [B, H_l, W_l]; templates: list of [B or 1, H_l, W_l] (already smoothed when
templates_smoothed). Differentiable in maps.)doc");

  py::class_<SigmaMatch>(m, "SigmaMatch")
      .def_readonly("index", &SigmaMatch::index)
      .def_readonly("recorded", &SigmaMatch::recorded)
      .def_readonly("log_distance", &SigmaMatch::log_distance)
      .def("__repr__", [](const SigmaMatch& s) {
        return "SigmaMatch(index=" + std::to_string(s.index) +
               ", recorded=" + std::to_string(s.recorded) + ")";
      });
  m.def("nearest_sigma", guarded(&nearest_sigma), py::arg("recorded"), py::arg("requested"),
        py::arg("sigma_tolerance") = 0.05,
        "Nearest recorded sigma in log space; ValueError when outside [min/(1+tol), max*(1+tol)].");

  py::class_<SubjectTokens>(m, "SubjectTokens")
      .def(py::init<>())
      .def(py::init([](std::string subject, std::string prompt, std::vector<int64_t> indices) {
             return SubjectTokens{std::move(subject), std::move(prompt), std::move(indices)};
           }),
           py::arg("subject"), py::arg("prompt"), py::arg("indices"))
      .def_readwrite("subject", &SubjectTokens::subject)
      .def_readwrite("prompt", &SubjectTokens::prompt)
      .def_readwrite("indices", &SubjectTokens::indices);

  py::class_<GuidanceMetadata>(m, "GuidanceMetadata")
      .def(py::init<>())
      .def_readwrite("model_family", &GuidanceMetadata::model_family)
      .def_readwrite("layer_keys", &GuidanceMetadata::layer_keys)
      .def_readwrite("tokens", &GuidanceMetadata::tokens)
      .def_readwrite("image_height", &GuidanceMetadata::image_height)
      .def_readwrite("image_width", &GuidanceMetadata::image_width)
      .def_readwrite("sigmas", &GuidanceMetadata::sigmas)
      .def_readwrite("feature_source", &GuidanceMetadata::feature_source)
      .def_readwrite("tau", &GuidanceMetadata::tau)
      .def_readwrite("extra", &GuidanceMetadata::extra)
      .def("to_json",
           guarded(+[](const GuidanceMetadata& md, const std::string& kind) {
             return metadata_to_json(md, kind);
           }),
           py::arg("kind"))
      .def_static("from_json",
                  guarded(+[](const std::string& text, const std::string& kind) {
                    return metadata_from_json(text, kind);
                  }),
                  py::arg("text"), py::arg("kind"));

  py::class_<GuidanceStore, std::shared_ptr<GuidanceStore>>(
      m, "GuidanceStore", "Tensors recorded per (sigma index, layer key), with their metadata.")
      .def_property_readonly("metadata", &GuidanceStore::metadata)
      .def_property_readonly("kind", &GuidanceStore::kind)
      .def("set", guarded(&GuidanceStore::set), py::arg("sigma_index"), py::arg("layer_key"),
           py::arg("value"), "Store the entry of (sigma_index, layer_key); validated for this kind.")
      .def("has", &GuidanceStore::has, py::arg("sigma_index"), py::arg("layer_key"))
      .def("get", guarded(&GuidanceStore::get), py::arg("sigma_index"), py::arg("layer_key"))
      .def("match_sigma", guarded(&GuidanceStore::match_sigma), py::arg("sigma"),
           py::arg("sigma_tolerance") = 0.05,
           "The recorded sigma nearest to `sigma` in log space; ValueError outside the range.")
      .def("lookup", guarded(&GuidanceStore::lookup), py::arg("sigma"), py::arg("layer_key"),
           py::arg("sigma_tolerance") = 0.05,
           "The entry of layer_key at the recorded sigma nearest to `sigma`.")
      .def("check_complete", guarded(&GuidanceStore::check_complete))
      .def("__len__", &GuidanceStore::num_entries)
      .def("entries", &entries_dict, "{(sigma_index, layer_key): tensor}");

  py::class_<Palette, GuidanceStore, std::shared_ptr<Palette>>(
      m, "Palette", "Masked reference features per (sigma, layer): entries [M, C].")
      .def(py::init(guarded(+[](GuidanceMetadata md) { return std::make_shared<Palette>(std::move(md)); })),
           py::arg("metadata"))
      .def("save", guarded(+[](const Palette& p, const std::string& path) { save_palette(p, path); }),
           py::arg("path"), "Write atomically as .safetensors.")
      .def("to_bytes", guarded(+[](const Palette& p) { return py::bytes(palette_to_bytes(p)); }))
      .def_static("load", guarded(&load_palette), py::arg("path"))
      .def_static("from_bytes", guarded(&palette_from_python_bytes), py::arg("data"));

  py::class_<LayoutTemplate, GuidanceStore, std::shared_ptr<LayoutTemplate>>(
      m, "LayoutTemplate", "Smoothed subject maps per (sigma, layer): entries [B, H, W].")
      .def(py::init(guarded(+[](GuidanceMetadata md) {
             return std::make_shared<LayoutTemplate>(std::move(md));
           })),
           py::arg("metadata"))
      .def("save", guarded(+[](const LayoutTemplate& t, const std::string& path) {
             save_layout_template(t, path);
           }),
           py::arg("path"), "Write atomically as .safetensors.")
      .def("to_bytes",
           guarded(+[](const LayoutTemplate& t) { return py::bytes(layout_template_to_bytes(t)); }))
      .def_static("load", guarded(&load_layout_template), py::arg("path"))
      .def_static("from_bytes", guarded(&layout_template_from_python_bytes), py::arg("data"));

  py::class_<LayerCapture>(m, "LayerCapture", "What a watched layer keeps: maps and/or features.")
      .def(py::init([](bool maps, bool features) { return LayerCapture{maps, features}; }),
           py::arg("maps") = false, py::arg("features") = false)
      .def_readwrite("maps", &LayerCapture::maps)
      .def_readwrite("features", &LayerCapture::features);

  py::class_<AttentionRecorder, std::shared_ptr<AttentionRecorder>>(
      m, "AttentionRecorder",
      R"doc(Cross-attention callback that records the guidance terms' inputs.

layers: {layer_key: LayerCapture}; token_indices: prompt token positions whose maps are kept.
maps(): {layer: [Bc, T, H, W]} head-averaged probabilities of the conditional rows;
features(): {layer: [Bc, N, heads*dim]} attention outputs of the conditional rows.)doc")
      .def(py::init(guarded(+[](std::map<std::string, LayerCapture> layers,
                                std::vector<int64_t> token_indices) {
             return std::make_shared<AttentionRecorder>(std::move(layers), std::move(token_indices));
           })),
           py::arg("layers"), py::arg("token_indices"))
      .def("cross_attention",
           guarded(+[](AttentionRecorder& r, const at::Tensor& q, const at::Tensor& k,
                       const at::Tensor& v, const std::string& layer_key, int64_t heads,
                       std::vector<int64_t> cond_or_uncond, int64_t height, int64_t width) {
             return r.cross_attention(q, k, v,
                                      AttentionCall{layer_key, heads, std::move(cond_or_uncond),
                                                    height, width});
           }),
           py::arg("q"), py::arg("k"), py::arg("v"), py::arg("layer_key"), py::arg("heads"),
           py::arg("cond_or_uncond"), py::arg("height"), py::arg("width"),
           "q [B, N, heads*dim], k/v [B, L, heads*dim] -> attention output [B, N, heads*dim].")
      .def_property("capture", &AttentionRecorder::capture, &AttentionRecorder::set_capture,
                    "Force recording without gradients (palette and template capture passes).")
      .def_property("recompute_maps", &AttentionRecorder::recompute_maps, &AttentionRecorder::set_recompute_maps,
                    "Maps' backward recomputes the attention probabilities instead of keeping them (less memory).")
      .def_property(
          "feature_source",
          [](const AttentionRecorder& r) { return std::string(feature_source_name(r.feature_source())); },
          guarded(+[](AttentionRecorder& r, const std::string& name) {
            r.set_feature_source(feature_source_from_name(name));
          }),
          "what the appearance layers record as features: 'attn2_query' (the query projection of the image "
          "hidden states, default) or 'attn2_output' (the attention output, which carries little appearance)")
      .def_property_readonly("recording", &AttentionRecorder::recording)
      .def("watches", &AttentionRecorder::watches, py::arg("layer_key"))
      .def_property_readonly("token_indices", &AttentionRecorder::token_indices)
      .def("maps", &AttentionRecorder::maps)
      .def("features", &AttentionRecorder::features)
      .def("clear", &AttentionRecorder::clear)
      .def_property_readonly("captured_bytes", &AttentionRecorder::captured_bytes);

  py::class_<GuidanceConfig>(m, "GuidanceConfig", "Weights, step windows, layers and tokens of the guidance.")
      .def(py::init<>())
      .def_readwrite("appearance_layers", &GuidanceConfig::appearance_layers)
      .def_readwrite("layout_layers", &GuidanceConfig::layout_layers)
      .def_readwrite("token_indices", &GuidanceConfig::token_indices)
      .def_readwrite("mask_layers", &GuidanceConfig::mask_layers)
      .def_readwrite("appearance_weight", &GuidanceConfig::appearance_weight)
      .def_readwrite("layout_weight", &GuidanceConfig::layout_weight)
      .def_readwrite("appearance_start", &GuidanceConfig::appearance_start)
      .def_readwrite("appearance_end", &GuidanceConfig::appearance_end)
      .def_readwrite("layout_start", &GuidanceConfig::layout_start)
      .def_readwrite("layout_end", &GuidanceConfig::layout_end)
      .def_readwrite("tau", &GuidanceConfig::tau)
      .def_readwrite("min_mask_pixels", &GuidanceConfig::min_mask_pixels)
      .def_readwrite("smoothing_kernel", &GuidanceConfig::smoothing_kernel)
      .def_readwrite("smoothing_std_dev", &GuidanceConfig::smoothing_std_dev)
      .def_readwrite("strength", &GuidanceConfig::strength)
      .def_readwrite("sigma_tolerance", &GuidanceConfig::sigma_tolerance);

  py::class_<StepLoss>(m, "StepLoss", "One step's energy: total [Bc] and its terms.")
      .def_readonly("total", &StepLoss::total)
      .def_readonly("appearance_on", &StepLoss::appearance_on)
      .def_readonly("layout_on", &StepLoss::layout_on)
      .def_readonly("appearance", &StepLoss::appearance)
      .def_readonly("layout", &StepLoss::layout)
      .def_readonly("mask_pixels", &StepLoss::mask_pixels)
      .def_readonly("palette_sigma_index", &StepLoss::palette_sigma_index)
      .def_readonly("template_sigma_index", &StepLoss::template_sigma_index);

  py::class_<GuidanceEngine, std::shared_ptr<GuidanceEngine>>(
      m, "GuidanceEngine", "Turns recorded captures into the Pick-and-Draw energy; fills palettes and templates.")
      .def(py::init(guarded(+[](GuidanceConfig config) {
             return std::make_shared<GuidanceEngine>(std::move(config));
           })),
           py::arg("config"))
      .def_property_readonly("config", &GuidanceEngine::config)
      .def("appearance_active", guarded(&GuidanceEngine::appearance_active), py::arg("step"), py::arg("steps"))
      .def("layout_active", guarded(&GuidanceEngine::layout_active), py::arg("step"), py::arg("steps"))
      .def("any_active", guarded(&GuidanceEngine::any_active), py::arg("step"), py::arg("steps"))
      .def("recorder_layers", &GuidanceEngine::recorder_layers)
      .def("step_loss",
           guarded(+[](const GuidanceEngine& e, const AttentionRecorder& r,
                       std::shared_ptr<Palette> palette, std::shared_ptr<LayoutTemplate> layout,
                       double sigma, int64_t step, int64_t steps) {
             return e.step_loss(r, palette.get(), layout.get(), sigma, step, steps);
           }),
           py::arg("recorder"), py::arg("palette"), py::arg("layout_template"), py::arg("sigma"),
           py::arg("step"), py::arg("steps"))
      .def("record_palette_entry", guarded(&GuidanceEngine::record_palette_entry),
           py::arg("recorder"), py::arg("palette"), py::arg("sigma_index"), py::arg("row") = 0,
           py::arg("user_mask") = py::none())
      .def("record_template_entry", guarded(&GuidanceEngine::record_template_entry),
           py::arg("recorder"), py::arg("layout_template"), py::arg("sigma_index"))
      .def("subject_mask", guarded(&GuidanceEngine::subject_mask), py::arg("recorder"),
           py::arg("height"), py::arg("width"))
      .def("palette_mask", guarded(&GuidanceEngine::palette_mask), py::arg("recorder"),
           py::arg("height"), py::arg("width"), py::arg("row") = 0, py::arg("user_mask") = py::none());

  py::class_<UNetLayout>(m, "UNetLayout", "The UNet configuration fields that place its cross-attention layers.")
      .def(py::init<>())
      .def_readwrite("family", &UNetLayout::family)
      .def_readwrite("model_channels", &UNetLayout::model_channels)
      .def_readwrite("channel_mult", &UNetLayout::channel_mult)
      .def_readwrite("num_res_blocks", &UNetLayout::num_res_blocks)
      .def_readwrite("transformer_depth", &UNetLayout::transformer_depth)
      .def_readwrite("transformer_depth_middle", &UNetLayout::transformer_depth_middle)
      .def_readwrite("transformer_depth_output", &UNetLayout::transformer_depth_output);

  py::class_<CrossAttentionLayer>(m, "CrossAttentionLayer")
      .def_readonly("key", &CrossAttentionLayer::key)
      .def_readonly("block", &CrossAttentionLayer::block)
      .def_readonly("block_id", &CrossAttentionLayer::block_id)
      .def_readonly("transformer_index", &CrossAttentionLayer::transformer_index)
      .def_readonly("downscale", &CrossAttentionLayer::downscale)
      .def_readonly("channels", &CrossAttentionLayer::channels);

  m.def("supported_families", &supported_families);
  py::class_<ModelLayerTable, std::shared_ptr<ModelLayerTable>>(
      m, "ModelLayerTable", "Cross-attention layers of a UNet and the default layer sets of the terms.")
      .def(py::init(guarded(+[](const UNetLayout& layout) {
             return std::make_shared<ModelLayerTable>(layout);
           })),
           py::arg("layout"))
      .def_property_readonly("family", &ModelLayerTable::family)
      .def("layers", &ModelLayerTable::layers)
      .def("layer", guarded(&ModelLayerTable::layer), py::arg("key"))
      .def("default_appearance_layers", guarded(&ModelLayerTable::default_appearance_layers),
           py::arg("latent_height"), py::arg("latent_width"))
      .def("default_layout_layers", &ModelLayerTable::default_layout_layers)
      .def("token_grid", guarded(&ModelLayerTable::token_grid), py::arg("key"),
           py::arg("latent_height"), py::arg("latent_width"));
}
