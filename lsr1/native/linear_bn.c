/* Training-mode BatchNorm (+ PReLU, + residual) over the rows of z = x W^T, forward and backward, for the CPU.
 *
 * Why C: in a meta-iteration every Linear -> BatchNorm [-> PReLU] node works on a (rows, cols) activation
 * that the unroll keeps for the backward pass, so each torch operator between the matmuls writes a new
 * tensor to memory that is not in cache. These loops make two passes over z in the forward (statistics,
 * then the output) and two over the gradient in the backward, instead of a dozen operators (lsr1/nn.py,
 * benchmarks/meta_step.py). The loops run over the columns innermost, so the compiler vectorises them
 * without reassociating any sum (each column keeps its own accumulator). Compiled without contraction to
 * FMA, so float64 results agree with torch's operators to rounding (tests/test_nn.py).
 *
 * T and NAME come from the including file (linear_bn_kernels.c): one copy for float, one for double.
 */

/* z: (rows, cols) x W^T without the bias, replaced in place by z - mean(z): the bias cancels in the
 * normalisation, so it enters only the running mean. share: (rows) weights of the weighted statistics (they
 * sum to 1, or to 0 when no row is live), or NULL for 1/rows each. slope: one PReLU slope or NULL;
 * residual: (rows, cols) added to the output, or NULL. The running statistics move toward the batch's
 * (mean of z + bias, variance times unbias) by factor, as torch's lerp_ does; rstd = 1 / sqrt(var + eps)
 * and scale = rstd * gamma are kept for the backward. work: 2 * cols scratch. */
VECTORISED void NAME(linear_bn_forward)(T *restrict z, const T *restrict residual, T *restrict out, const T *restrict bias,
                             const T *restrict gamma, const T *restrict beta, const T *restrict slope,
                             const T *restrict share, double eps, long rows, long cols, T *restrict running_mean,
                             T *restrict running_var, double factor, double unbias, T *restrict rstd,
                             T *restrict scale, T *restrict work) {
    T *restrict mean = work, *restrict var = work + cols;
    T total = share ? (T)0 : (T)1;
    for (long c = 0; c < cols; c++) mean[c] = 0;
    if (share) {
        for (long r = 0; r < rows; r++) {
            const T s = share[r];
            const T *restrict zr = z + r * cols;
            total += s;
            for (long c = 0; c < cols; c++) mean[c] += zr[c] * s;
        }
    } else {
        for (long r = 0; r < rows; r++) {
            const T *restrict zr = z + r * cols;
            for (long c = 0; c < cols; c++) mean[c] += zr[c];
        }
        for (long c = 0; c < cols; c++) mean[c] /= (T)rows;
    }
    for (long c = 0; c < cols; c++) var[c] = 0;
    for (long r = 0; r < rows; r++) {
        const T s = share ? share[r] : (T)1;
        T *restrict zr = z + r * cols;
        for (long c = 0; c < cols; c++) {
            const T d = zr[c] - mean[c];
            zr[c] = d;
            var[c] += d * d * s;
        }
    }
    for (long c = 0; c < cols; c++) {
        if (!share) var[c] /= (T)rows;
        rstd[c] = (T)1 / SQRT(var[c] + (T)eps);
        scale[c] = rstd[c] * gamma[c];
        running_mean[c] += (T)factor * (mean[c] + bias[c] * total - running_mean[c]);
        running_var[c] += (T)factor * (var[c] * (T)unbias - running_var[c]);
    }
    const T a = slope ? *slope : (T)1;
    for (long r = 0; r < rows; r++) {
        const T *restrict zr = z + r * cols;
        T *restrict o = out + r * cols;
        for (long c = 0; c < cols; c++) {
            const T n = beta[c] + zr[c] * scale[c];
            const T m = a * n;
            o[c] = slope && !(n > 0) ? m : n;
        }
        if (residual) {
            const T *restrict res = residual + r * cols;
            for (long c = 0; c < cols; c++) o[c] += res[c];
        }
    }
}

/* The gradients of linear_bn_forward's output with respect to z (grad_z, (rows, cols); the matmuls for x
 * and W are torch's), the bias (the sum of grad_z over rows), gamma, beta and the slope. centered, rstd,
 * scale: from the forward; work: 4 * cols scratch. */
VECTORISED void NAME(linear_bn_backward)(const T *restrict grad_out, const T *restrict centered, const T *restrict rstd,
                              const T *restrict scale, const T *restrict beta, const T *restrict slope,
                              const T *restrict share, long rows, long cols, T *restrict grad_z,
                              T *restrict grad_bias, T *restrict grad_gamma, T *restrict grad_beta,
                              T *restrict grad_slope, T *restrict work) {
    T *restrict dot = work, *restrict negative = work + cols, *restrict shift = work + 2 * cols,
      *restrict tilt = work + 3 * cols;
    for (long c = 0; c < cols; c++) grad_beta[c] = dot[c] = negative[c] = grad_bias[c] = 0;
    const T a = slope ? *slope : (T)1;
    for (long r = 0; r < rows; r++) {
        const T *restrict go = grad_out + r * cols, *restrict ce = centered + r * cols;
        T *restrict gz = grad_z + r * cols;
        for (long c = 0; c < cols; c++) {
            const T n = beta[c] + ce[c] * scale[c];
            const T g = go[c];
            const int below = slope && !(n > 0);
            const T gn = below ? g * a : g;  /* d out / d normed: 1 where positive, else the slope */
            negative[c] += below ? g * n : (T)0;
            gz[c] = gn;
            grad_beta[c] += gn;
            dot[c] += gn * ce[c];
        }
    }
    T slope_total = 0;
    for (long c = 0; c < cols; c++) {
        slope_total += negative[c];
        grad_gamma[c] = dot[c] * rstd[c];
    }
    if (slope) *grad_slope = slope_total;
    /* d/dz_j of BN: scale * (g_j - s_j sum_i g_i - s_j centered_j rstd^2 sum_i g_i centered_i), s_j the row's
     * share of the statistics (1/rows without weights) */
    if (share) {
        for (long c = 0; c < cols; c++) tilt[c] = dot[c] * rstd[c] * rstd[c];
        for (long r = 0; r < rows; r++) {
            const T s = share[r];
            const T *restrict ce = centered + r * cols;
            T *restrict gz = grad_z + r * cols;
            for (long c = 0; c < cols; c++) {
                const T v = (gz[c] - s * grad_beta[c] - s * ce[c] * tilt[c]) * scale[c];
                gz[c] = v;
                grad_bias[c] += v;
            }
        }
    } else {
        for (long c = 0; c < cols; c++) {
            shift[c] = -(grad_beta[c] / (T)rows) * scale[c];
            tilt[c] = -(dot[c] * rstd[c] * rstd[c] / (T)rows) * scale[c];
        }
        for (long r = 0; r < rows; r++) {
            const T *restrict ce = centered + r * cols;
            T *restrict gz = grad_z + r * cols;
            for (long c = 0; c < cols; c++) {
                const T v = shift[c] + gz[c] * scale[c] + ce[c] * tilt[c];
                gz[c] = v;
                grad_bias[c] += v;
            }
        }
    }
}
