// UREMD against a naive triple loop, its tie rule, gradients against finite differences, and
// the boundary checks. CUDA cases run when a device is present and skip otherwise.
#include "pickdraw/uremd.h"
#include "ops/uremd_internal.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "test_utils.h"

namespace {

using pickdraw::testing::seed_for_test;

// Oracle: loops over every pair in float64, first index wins ties.
struct Naive {
  at::Tensor loss, min_cost, argmin;
};
Naive naive_uremd(const at::Tensor& g_in, const at::Tensor& p_in, const at::Tensor& w_in) {
  const auto g = g_in.to(at::kDouble).cpu().contiguous();
  const auto p = p_in.to(at::kDouble).cpu().contiguous();
  const int64_t B = g.size(0), N = g.size(1), C = g.size(2), M = p.size(1);
  auto min_cost = at::zeros({B, N}, at::kDouble);
  auto argmin = at::zeros({B, N}, at::kLong);
  auto loss = at::zeros({B}, at::kDouble);
  const auto ga = g.accessor<double, 3>();
  const auto pa = p.accessor<double, 3>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t pb = p.size(0) == 1 ? 0 : b;
    double num = 0, den = 0;
    for (int64_t n = 0; n < N; ++n) {
      double best = std::numeric_limits<double>::infinity();
      int64_t arg = 0;
      double gn = 0;
      for (int64_t c = 0; c < C; ++c) gn += ga[b][n][c] * ga[b][n][c];
      gn = std::max(std::sqrt(gn), 1e-8);
      for (int64_t m = 0; m < M; ++m) {
        double dot = 0, pn = 0;
        for (int64_t c = 0; c < C; ++c) {
          dot += ga[b][n][c] * pa[pb][m][c];
          pn += pa[pb][m][c] * pa[pb][m][c];
        }
        pn = std::max(std::sqrt(pn), 1e-8);
        const double cost = 1.0 - dot / (gn * pn);
        if (cost < best) {
          best = cost;
          arg = m;
        }
      }
      min_cost[b][n] = best;
      argmin[b][n] = arg;
      const double w = w_in.defined() ? w_in[b][n].item<double>() : 1.0;
      num += w * best;
      den += w;
    }
    loss[b] = den > 0 ? num / den : 0.0;
  }
  return {loss, min_cost, argmin};
}

void expect_matches_naive(const at::Tensor& g, const at::Tensor& p, const at::Tensor& w,
                          double tol) {
  const auto expected = naive_uremd(g, p, w);
  const auto [loss, min_cost, argmin] =
      pickdraw::uremd_with_argmin(g, p, w.defined() ? std::optional<at::Tensor>(w) : std::nullopt);
  EXPECT_TRUE(at::allclose(loss.to(at::kDouble).cpu(), expected.loss, tol, tol))
      << loss << expected.loss;
  EXPECT_TRUE(at::allclose(min_cost.to(at::kDouble).cpu(), expected.min_cost, tol, tol));
  // Indices may differ only where the chosen entries' costs tie within rounding.
  const auto a = argmin.cpu();
  const auto gd = g.to(at::kDouble).cpu(), pd = p.to(at::kDouble).cpu();
  for (int64_t b = 0; b < g.size(0); ++b) {
    for (int64_t n = 0; n < g.size(1); ++n) {
      const int64_t got = a[b][n].item<int64_t>(), want = expected.argmin[b][n].item<int64_t>();
      if (got == want) continue;
      const int64_t pb = p.size(0) == 1 ? 0 : b;
      const double c_got = 1 - at::cosine_similarity(gd[b][n], pd[pb][got], 0, 1e-8).item<double>();
      EXPECT_NEAR(c_got, expected.min_cost[b][n].item<double>(), tol)
          << "argmin " << got << " vs " << want << " is not a tie";
    }
  }
}

TEST(Uremd, MatchesNaiveLoopsOnRandomSizes) {
  seed_for_test();
  const int64_t shapes[][4] = {{1, 1, 1, 1}, {2, 7, 5, 3}, {3, 33, 70, 9}, {1, 300, 1100, 17},
                               {2, 513, 40, 64}};
  for (const auto& s : shapes) {
    const auto g = at::randn({s[0], s[1], s[3]}, at::kDouble);
    const auto p = at::randn({s[0], s[2], s[3]}, at::kDouble);
    expect_matches_naive(g, p, at::Tensor(), 1e-12);
    expect_matches_naive(g.to(at::kFloat), p.to(at::kFloat), at::Tensor(), 1e-5);
    expect_matches_naive(g, p, at::rand({s[0], s[1]}, at::kDouble), 1e-12);
  }
}

TEST(Uremd, SharedPaletteBroadcastsOverTheBatch) {
  seed_for_test();
  const auto g = at::randn({3, 50, 8}, at::kDouble);
  const auto p = at::randn({1, 20, 8}, at::kDouble);
  expect_matches_naive(g, p, at::Tensor(), 1e-12);
  const auto loss = pickdraw::uremd(g, p);
  EXPECT_TRUE(at::allclose(loss, pickdraw::uremd(g, p.expand({3, 20, 8}).contiguous())));
}

TEST(Uremd, HalfInputsAccumulateInFloat) {
  seed_for_test();
  const auto g = at::randn({2, 40, 32});
  const auto p = at::randn({2, 30, 32});
  const auto loss = pickdraw::uremd(g.to(at::kHalf), p.to(at::kHalf));
  EXPECT_EQ(loss.scalar_type(), at::kHalf);
  const auto expected = naive_uremd(g.to(at::kHalf), p.to(at::kHalf), at::Tensor()).loss;
  EXPECT_TRUE(at::allclose(loss.to(at::kDouble), expected, 2e-3, 2e-3));
}

TEST(Uremd, TiesGoToTheLowestIndex) {
  // Palette entries 1, 3 and 4 are the same direction at different scales: equal cost exactly.
  auto p = at::zeros({1, 5, 2}, at::kDouble);
  p[0][0][1] = 1;
  p[0][1][0] = 1;
  p[0][2][0] = -1;
  p[0][3][0] = 2;
  p[0][4][0] = 0.5;
  auto g = at::zeros({1, 1, 2}, at::kDouble);
  g[0][0][0] = 3;
  const auto [loss, min_cost, argmin] = pickdraw::uremd_with_argmin(g, p);
  EXPECT_EQ(argmin[0][0].item<int64_t>(), 1);
  EXPECT_DOUBLE_EQ(loss[0].item<double>(), 0.0);
}

TEST(Uremd, TiesAcrossTilesGoToTheLowestIndex) {
  // More palette columns than one CPU tile holds: the exact duplicate in a later tile must lose.
  // (Bitwise-equal entries: the same direction at another scale can round to a different cost.)
  seed_for_test();
  const int64_t M = 5000;
  auto p = at::randn({1, M, 4}, at::kDouble);
  auto g = at::randn({1, 3, 4}, at::kDouble);
  p[0][10] = g[0][1] * 2;
  p[0][M - 1] = g[0][1] * 2;
  const auto [loss, min_cost, argmin] = pickdraw::uremd_with_argmin(g, p);
  EXPECT_EQ(argmin[0][1].item<int64_t>(), 10);
}

TEST(Uremd, AtenPathMatchesTheFusedKernel) {
  // The path CUDA tensors take in a build without CUDA kernels, run here on the CPU: the same costs
  // and argmin as the fused kernel, for batched and shared palettes and across several tiles.
  seed_for_test();
  struct Case {
    int64_t B, Bp, N, M, C;
  };
  for (const auto& c : {Case{2, 2, 7, 5, 3}, Case{3, 1, 9, 11, 4}, Case{1, 1, 2000, 3000, 8}}) {
    const auto g = at::randn({c.B, c.N, c.C}, at::kDouble);
    auto p = at::randn({c.Bp, c.M, c.C}, at::kDouble);
    if (c.M > 2000) p[0][c.M - 1] = p[0][3];  // an exact duplicate in a later tile must lose
    const auto [cost, index] = pickdraw::detail::row_min_aten(g, p);
    const auto [loss, fused_cost, fused_index] = pickdraw::uremd_with_argmin(g, p);
    EXPECT_TRUE(at::allclose(cost, fused_cost, 1e-12, 1e-12)) << c.N << "x" << c.M;
    // The same index, except where the two costs tie to rounding: the paths' GEMMs tile the palette differently,
    // and a BLAS may round the duplicate's dot product differently in another tile's width (the exact-tie rule
    // has its own tests above).
    const auto palette = p.expand({c.B, c.M, c.C});
    const auto cost_at = [&](const at::Tensor& i) {
      const auto chosen = at::gather(palette, 1, i.unsqueeze(-1).expand({c.B, c.N, c.C}));
      return 1 - at::cosine_similarity(g, chosen, -1, 0.0);
    };
    const auto differs = index.ne(fused_index);
    EXPECT_TRUE(at::allclose(cost_at(index).masked_select(differs), cost_at(fused_index).masked_select(differs),
                             0.0, 1e-12))
        << c.N << "x" << c.M << ": " << differs.sum().item<int64_t>() << " rows pick another index";
  }
}

TEST(Uremd, ZeroWeightsAndEmptyInputsGiveZero) {
  const auto g = at::randn({2, 6, 3}, at::kDouble).requires_grad_();
  const auto p = at::randn({2, 4, 3}, at::kDouble);
  auto w = at::ones({2, 6}, at::kDouble);
  w[1].zero_();
  const auto loss = pickdraw::uremd(g, p, w);
  EXPECT_EQ(loss[1].item<double>(), 0.0);
  loss.sum().backward();
  EXPECT_TRUE(at::all(g.grad()[1] == 0).item<bool>());
  EXPECT_TRUE(at::all(at::isfinite(g.grad())).item<bool>());

  const auto empty = pickdraw::uremd(at::zeros({2, 0, 3}), at::zeros({2, 0, 3}));
  EXPECT_EQ(empty.sizes(), at::IntArrayRef({2}));
  EXPECT_TRUE(at::all(empty == 0).item<bool>());
  EXPECT_EQ(pickdraw::uremd(at::zeros({0, 5, 3}), at::zeros({0, 2, 3})).numel(), 0);
}

TEST(Uremd, GradientsMatchFiniteDifferences) {
  seed_for_test();
  const auto g = at::randn({2, 5, 4}, at::kDouble).requires_grad_();
  const auto p = at::randn({2, 3, 4}, at::kDouble).requires_grad_();
  const auto w = at::rand({2, 5}, at::kDouble).requires_grad_();
  const auto upstream = at::tensor({0.7, -1.3}, at::kDouble);
  (pickdraw::uremd(g, p, w) * upstream).sum().backward();
  const double h = 1e-6;
  for (const auto& x : {g, p, w}) {
    auto flat = x.detach().view({-1});
    const auto analytic = x.grad().view({-1});
    for (int64_t i = 0; i < flat.numel(); ++i) {
      const double orig = flat[i].item<double>();
      flat[i] = orig + h;
      const double up = (pickdraw::uremd(g.detach(), p.detach(), w.detach()) * upstream).sum().item<double>();
      flat[i] = orig - h;
      const double down = (pickdraw::uremd(g.detach(), p.detach(), w.detach()) * upstream).sum().item<double>();
      flat[i] = orig;
      EXPECT_NEAR(analytic[i].item<double>(), (up - down) / (2 * h), 1e-6) << "element " << i;
    }
  }
}

TEST(Uremd, RejectsBadInputsWithNamedArguments) {
  const auto g = at::randn({2, 5, 4});
  const auto p = at::randn({2, 3, 4});
  auto expect_error = [](auto&& fn, const std::string& fragment) {
    try {
      fn();
      ADD_FAILURE() << "no error; expected one mentioning '" << fragment << "'";
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  expect_error([&] { pickdraw::uremd(g[0], p); }, "generated must be a 3-D tensor");
  expect_error([&] { pickdraw::uremd(g, p.to(at::kDouble)); }, "same dtype");
  expect_error([&] { pickdraw::uremd(g.to(at::kLong), p.to(at::kLong)); }, "floating-point");
  expect_error([&] { pickdraw::uremd(g, at::randn({2, 3, 5})); }, "feature size C");
  expect_error([&] { pickdraw::uremd(g, at::randn({3, 3, 4})); }, "batch size");
  expect_error([&] { pickdraw::uremd(g, at::randn({2, 0, 4})); }, "palette has no features");
  expect_error([&] { pickdraw::uremd(g, p, at::ones({2, 4})); }, "weight must have shape");
  expect_error([&] { pickdraw::uremd(g, p, at::ones({2, 5}, at::kDouble)); }, "same dtype");
}

TEST(UremdCuda, MatchesCpuAndNaive) {
  PICKDRAW_SKIP_WITHOUT_CUDA();
  seed_for_test();
  for (const auto& s : std::vector<std::array<int64_t, 4>>{{1, 1, 1, 1}, {2, 300, 700, 64}, {1, 4096, 2048, 320}}) {
    const auto g = at::randn({s[0], s[1], s[3]});
    const auto p = at::randn({s[0], s[2], s[3]});
    const auto cpu = pickdraw::uremd_with_argmin(g, p);
    const auto cuda = pickdraw::uremd_with_argmin(g.cuda(), p.cuda());
    EXPECT_TRUE(at::allclose(std::get<0>(cuda).cpu(), std::get<0>(cpu), 1e-5, 1e-5));
    EXPECT_TRUE(at::allclose(std::get<1>(cuda).cpu(), std::get<1>(cpu), 1e-5, 1e-5));
    if (s[1] * s[2] < 1000000) expect_matches_naive(g.cuda(), p.cuda(), at::Tensor(), 1e-5);
  }
}

}  // namespace
